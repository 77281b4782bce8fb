"""Evaluate a checkpoint: ``python -m ffd.eval ckpt_path=outputs/train/<run>/checkpoints/<best>.ckpt``.

By default it scores the training run's own test split (from the run's
manifest.csv); ``data.root=PATH`` scores any other data set instead (all of
its usable images unless ``data.split`` says otherwise). Writes metrics.json,
summary.md, predictions.csv and figures into the eval run folder.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from ffd.data.dataset import ImageDataset
from ffd.data.manifest import CLASS_NAMES, Record, check_files, discover, drop_duplicates, read_manifest
from ffd.data.transforms import build_transform
from ffd.errors import ConfigError, FfdError, exit_on_user_error
from ffd.metrics.breakdowns import breakdowns
from ffd.metrics.figures import all_figures
from ffd.metrics.report import build_report, summary_markdown
from ffd.models.module import FakeFaceClassifier
from ffd.runtime import register_resolvers, tune_malloc

log = logging.getLogger(__name__)
register_resolvers()


def load_checkpoint(path: str | Path) -> FakeFaceClassifier:
    """An ffd checkpoint, loaded without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FfdError(
            f"Checkpoint {path} does not exist. Pass ckpt_path=outputs/train/<run>/checkpoints/<file>.ckpt"
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors differ by file
        raise FfdError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err}).") from err
    if not isinstance(raw, dict) or "ffd" not in raw:
        raise FfdError(
            f"{path} is not an ffd checkpoint (it has no 'ffd' section): train one with ffd.train."
        )
    return FakeFaceClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()


def select_records(cfg: DictConfig, ckpt_path: Path) -> list[Record]:
    if cfg.data.root is None:
        manifest = ckpt_path.resolve().parent.parent / "manifest.csv"
        if not manifest.exists():
            raise FfdError(f"No manifest.csv next to the checkpoint's run ({manifest}); pass data.root=PATH.")
        records, split = read_manifest(manifest), cfg.data.split or "test"
    else:
        if cfg.data.split not in (None, "all"):
            # A new split of the training data would not be the run's split: it would leak.
            raise ConfigError(
                "With data.root, eval scores every image of that data set (data.split=all); "
                "to score a split of the training run, leave data.root unset."
            )
        records, split = discover(cfg.data.root), "all"
        check_files(records)
        drop_duplicates(records)
    rows = [r for r in records if r.ok and (split == "all" or r.split == split)]
    if not rows:
        raise FfdError(f"No usable images in split {split!r} (choose data.split=train|val|test|all).")
    return rows


@torch.no_grad()
def predict_probs(
    model: FakeFaceClassifier, records: list[Record], batch_size: int, num_workers: int
) -> torch.Tensor:
    """p_fake per record: the checkpoint's preprocessing, ffd's default precision (CUDA fp16, CPU bf16)."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model.to(device)
    dataset = ImageDataset(records, build_transform(model.preprocess), model.preprocess["size"])
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=cuda)
    out = []
    with torch.autocast(device.type, torch.float16 if cuda else torch.bfloat16):
        for x, _ in loader:
            out.append(model(x.to(device, non_blocking=True)).float().softmax(-1)[:, 1].cpu())
    return torch.cat(out)


def write_outputs(
    out: Path, records: list[Record], probs: torch.Tensor, labels: torch.Tensor, report: dict[str, Any]
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    (out / "summary.md").write_text(summary_markdown(report))
    threshold = report["at_chosen_threshold"]["threshold"]
    with (out / "predictions.csv").open("w", newline="") as fh:
        rows = csv.writer(fh)
        rows.writerow(["path", "label", "p_fake", "predicted"])
        for r, p in zip(records, probs.tolist(), strict=True):
            rows.writerow([r.path, CLASS_NAMES[r.label], f"{p:.6f}", CLASS_NAMES[int(p >= threshold)]])
    tensorboard = SummaryWriter(str(out / "tensorboard"))
    (out / "figures").mkdir(exist_ok=True)
    for name, fig in all_figures(probs, labels, report).items():
        fig.savefig(out / "figures" / f"{name}.png", dpi=100, bbox_inches="tight")
        tensorboard.add_figure(f"eval/{name}", fig)  # closes the figure
    tensorboard.close()


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    ckpt_path = Path(cfg.ckpt_path)
    model = load_checkpoint(ckpt_path)
    records = select_records(cfg, ckpt_path)
    probs = predict_probs(model, records, cfg.data.batch_size, cfg.data.num_workers)
    labels = torch.tensor([r.label for r in records])
    report = build_report(probs, labels, model.threshold, cfg.bootstrap, cfg.seed)
    report["checkpoint"] = str(ckpt_path.resolve())
    report["breakdowns"] = breakdowns(records, probs, model.threshold)
    out = Path(cfg.paths.output_dir)
    write_outputs(out, records, probs, labels, report)
    log.info("\n%s", summary_markdown(report))
    log.info("Eval folder: %s", out.resolve())
    return report


@hydra.main(version_base="1.3", config_path="../../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(lambda: evaluate(cfg))


if __name__ == "__main__":
    tune_malloc()
    main()
