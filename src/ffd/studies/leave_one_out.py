"""Leave-one-out: how a detector does on a generator (or manipulation method) it never saw.

``python -m ffd.matrix protocol=leave_one_out root=DIR``: DIR holds one sub-folder per generator or
method, each a data set in any layout ffd reads (GenImage's ``<gen>/{train,val}/{ai,nature}/``,
ForenSynths', class folders, a CSV...). For each member, one model per recipe is trained on all the
others at once (``data.root`` as a list: each keeps its split) and scored on the held-out member's
test split (unseen) and on the other members' test splits, as its run split them (seen). The table:
AUROC with its bootstrap CI, TPR at 1 % FPR and accuracy at the model's threshold, seen and unseen,
and the gap (seen minus unseen AUROC), as leave_one_out.md, .csv, .json and a plot.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ffd.config import compose_config
from ffd.data.decoding import pixels
from ffd.data.images import DecodedImages
from ffd.data.layouts import discover
from ffd.data.manifest import build_manifest
from ffd.data.records import Record, read_manifest
from ffd.data.settings import Limits
from ffd.engine.scorers import Scorer, load_scorer
from ffd.errors import ConfigError, FfdError
from ffd.evaluation.evaluating import score
from ffd.metrics.figures import leave_one_out_figure
from ffd.metrics.scores import at_threshold
from ffd.metrics.tables import markdown_table
from ffd.studies.generalization import cell, train_run
from ffd.studies.training_runs import best_checkpoint

log = logging.getLogger(__name__)


def members(root: Path) -> list[Path]:
    """The sub-folders of ``root`` that are data sets (hidden ones and files left out), at least two."""
    if not root.is_dir():
        raise ConfigError(
            f"root={root} is not a folder: give the folder that holds one folder per generator."
        )
    found = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    if len(found) < 2:
        raise ConfigError(
            f"root={root} holds {len(found)} sub-folder(s): leave-one-out needs one folder per generator or "
            "method, two or more."
        )
    for folder in found:
        discover(folder)  # a folder in no layout ffd reads: its own message, before any training
    return found


def _quoted(path: Path) -> str:
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _member_of(row: Record, folders: list[Path]) -> Path | None:
    return next((f for f in folders if Path(row.path).is_relative_to(f)), None)


def _scores(scorer: Scorer, rows: list[Record], cfg: DictConfig) -> dict[str, Any]:
    """One test set's AUROC [CI], TPR at 1 % FPR and accuracy at the model's threshold."""
    images = DecodedImages(pixels, int(scorer.preprocess["size"]), Limits.from_config(cfg.limits))
    logits, _ = score(scorer, rows, cfg.batch_size, images, None)
    labels = torch.tensor([r.label for r in rows])
    acc = at_threshold(logits, labels, scorer.threshold_logit)["acc"]
    return cell(logits, labels, cfg.bootstrap, cfg.seed) | {"acc": acc, "n": len(rows)}


def held_out_test(folder: Path, train_overrides: list[str], limits: Limits) -> list[Record]:
    """The held-out member's test split, made as its own training run would split it."""
    split = compose_config("train", [*train_overrides, f"data.root={_quoted(folder)}"]).data.split
    rows = build_manifest([str(folder)], split.val_fraction, split.test_fraction, split.seed, limits)
    test = [r for r in rows if r.ok and r.split == "test"]
    if not test:
        raise FfdError(f"{folder} has no usable test images.")
    return test


def leave_one_out(cfg: DictConfig) -> dict[str, Any]:
    """The protocol of the module doc, into ``cfg.paths.output_dir``."""
    if not cfg.root:
        raise ConfigError(
            "protocol=leave_one_out needs root=DIR: a folder with one sub-folder per generator."
        )
    start = time.perf_counter()
    out, folders = Path(cfg.paths.output_dir), members(Path(cfg.root).expanduser().resolve())
    recipes: dict[str, list[str]] = OmegaConf.to_container(cfg.recipes, resolve=True)  # type: ignore[assignment]
    limits = Limits.from_config(cfg.limits)
    rows: dict[str, dict[str, Any]] = {}
    for recipe, overrides in recipes.items():
        for held in folders:
            seen = [f for f in folders if f != held]
            data = ["data=ciplab", "data.root=[" + ",".join(map(_quoted, seen)) + "]"]
            run = train_run(
                f"{recipe} without {held.name}", [*overrides, *data], out / "runs" / recipe / held.name
            )
            scorer = load_scorer(best_checkpoint(run), cfg.runtime, Path(cfg.paths.cache_dir) / "runtimes")
            tests = [r for r in read_manifest(run / "manifest.csv") if r.ok and r.split == "test"]
            by_member = {f.name: [r for r in tests if _member_of(r, seen) == f] for f in seen}
            row: dict[str, Any] = {
                "recipe": recipe, "held_out": held.name, "run": str(run),
                "unseen": _scores(scorer, held_out_test(held, overrides, limits), cfg),
                "seen": _scores(scorer, tests, cfg),
                "seen_members": {m: _scores(scorer, r, cfg) for m, r in by_member.items() if r},
            }  # fmt: skip
            row["gap"] = row["seen"]["auroc"] - row["unseen"]["auroc"]
            rows[f"{recipe}/{held.name}"] = row
            log.info("%s without %s: seen AUROC %.3f, unseen %.3f", recipe, held.name, row["seen"]["auroc"],
                     row["unseen"]["auroc"])  # fmt: skip
    result = {"protocol": "leave_one_out", "root": str(cfg.root), "members": [f.name for f in folders],
              "recipes": recipes, "rows": rows, "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    write_leave_one_out(out, result)
    return result


def _ci(s: dict[str, Any], key: str) -> str:
    ci = s.get(f"{key}_ci95")
    return f"{s[key]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _cells(s: dict[str, Any]) -> list[Any]:
    return [_ci(s, "auroc"), s["tpr_at_fpr_1"], s["acc"]]


def leave_one_out_markdown(result: dict[str, Any]) -> str:
    header = ["recipe", "held out", "unseen AUROC [95 % CI]", "unseen TPR@1%FPR", "unseen acc",
              "seen AUROC [95 % CI]", "seen TPR@1%FPR", "seen acc", "gap (seen - unseen AUROC)"]  # fmt: skip
    table = [
        [r["recipe"], r["held_out"], *(v for s in (r["unseen"], r["seen"]) for v in _cells(s)), r["gap"]]
        for r in result["rows"].values()
    ]
    lines = [
        f"# Leave one out: {', '.join(result['members'])}",
        "",
        "Each model is trained on every member but the held-out one and tested on the held-out member's "
        "test split (unseen) and on the other members' test splits (seen).",
        "",
        *markdown_table(header, table),
    ]
    return "\n".join(lines) + "\n"


def write_leave_one_out(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "leave_one_out.json").write_text(json.dumps(result, indent=2))
    (out / "leave_one_out.md").write_text(leave_one_out_markdown(result))
    with (out / "leave_one_out.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["recipe", "held_out", "tested_on", "n", "auroc", "auroc_lo", "auroc_hi", "tpr_at_fpr_1", "acc"]
        )
        for r in result["rows"].values():
            for name, s in (("unseen", r["unseen"]), ("seen", r["seen"]), *r["seen_members"].items()):
                lo, hi = s.get("auroc_ci95") or (float("nan"), float("nan"))
                w.writerow(
                    [
                        r["recipe"],
                        r["held_out"],
                        name,
                        s["n"],
                        s["auroc"],
                        lo,
                        hi,
                        s["tpr_at_fpr_1"],
                        s["acc"],
                    ]
                )
    names = list(result["rows"])
    fig = leave_one_out_figure(names, [result["rows"][n]["seen"] for n in names],
                               [result["rows"][n]["unseen"] for n in names])  # fmt: skip
    fig.savefig(out / "leave_one_out.png", dpi=100, bbox_inches="tight")
    log.info("\n%s", leave_one_out_markdown(result))
    log.info("Leave-one-out folder: %s (%.0f s)", out.resolve(), result["seconds"])
