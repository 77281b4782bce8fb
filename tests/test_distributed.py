"""DDP on CPU (gloo): two processes train and evaluate like one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY, run_train

from ffd.config import compose_config
from ffd.errors import ConfigError
from ffd.training.distributed import check_ddp_launch

# 16 train, 8 val, 8 test images: even splits, so DDP's sampler pads nothing. With no
# augmentation, no dropout and one batch per rank, two ranks of 8 average to exactly the
# gradient of one batch of 16: the runs differ only in float summation order.
ARGS = [*TINY, "data.split.val_fraction=0.25", "data.split.test_fraction=0.25", "data.augment.hflip=0",
        "data.augment.vflip=0", "data.augment.rotation=0", "trainer.precision=32-true",
        "trainer.max_epochs=3", "model.optimizer.lr=1e-2",
        "callbacks.progress_bar.refresh_rate=0"]  # fmt: skip


class SaveBackbone(L.Callback):
    """Each rank's backbone weights at the start of training and after every epoch (loaded by
    ``python -m ffd.train`` from this file: the tests put this folder on PYTHONPATH)."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def _save(self, trainer: L.Trainer, pl_module: L.LightningModule, when: str) -> None:
        state = {k: p.detach().clone() for k, p in pl_module.backbone.named_parameters()}
        torch.save(state, self.folder / f"rank{trainer.global_rank}_{when}.pt")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._save(trainer, pl_module, "start")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer, pl_module, f"epoch{trainer.current_epoch}")


def run(args: list[str], cwd: Path) -> None:
    result = run_train(*args, cwd=cwd)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tiny_synthetic: Path, tmp_path: Path) -> None:
    # One runtime for both: auto measures per thread count (a DDP rank has fewer threads), and a
    # different choice would rightly key another cache.
    common = [f"data.root={tiny_synthetic}", *ARGS, "runtime=onnxruntime"]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    # DDP first: rank 0 builds the feature cache while rank 1 waits for it.
    run(
        [*common, "trainer=ddp", "trainer.devices=2", "data.loader.batch_size=8", f"hydra.run.dir={ddp}"],
        tmp_path,
    )
    run([*common, "data.loader.batch_size=16", f"hydra.run.dir={single}"], tmp_path)

    a = json.loads((single / "metrics.json").read_text())
    b = json.loads((ddp / "metrics.json").read_text())
    assert a.keys() == b.keys() and {"test/auroc", "val/auroc_best", "val/threshold"} <= a.keys()
    assert b == pytest.approx(a, abs=1e-4)
    info = json.loads((ddp / "run_info.json").read_text())
    assert info["world_size"] == 2
    # One feature cache, built once; rank 1 read it.
    assert len(list((tmp_path / "data" / "cache").glob("features-*/meta.json"))) == 1
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir() if p.name.startswith("epoch")) == sorted(
        p.name for p in (single / "checkpoints").iterdir() if p.name.startswith("epoch")
    )


# Started by SLURM or torchrun: Lightning starts no process itself.
_LAUNCHED_FROM_OUTSIDE = (
    "LOCAL_RANK",
    "RANK",
    "WORLD_SIZE",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "TORCHELASTIC_RUN_ID",
)


@pytest.mark.parametrize(
    ("overrides", "processes"),
    [
        (
            ["trainer.devices=2"],
            2,
        ),  # no strategy key: Lightning's "auto" picks DDP and runs the command again
        (["trainer=ddp", "trainer.devices=2"], 2),
        (["trainer=ddp", "trainer.devices='3'"], 3),  # devices as a string
        (["trainer.devices=1"], 0),
        (["trainer=ddp", "trainer.devices=1"], 0),
        (["trainer.devices=2", "+trainer.strategy=ddp_spawn"], 0),  # spawned, not the command line again
    ],
)
def test_sweep_guard_follows_the_strategy_lightning_resolves(
    overrides: list[str], processes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in _LAUNCHED_FROM_OUTSIDE:
        monkeypatch.delenv(name, raising=False)
    trainer = compose_config("train", ["trainer.accelerator=cpu", *overrides]).trainer
    check_ddp_launch(trainer, multirun=False)  # a single run may always use several processes
    if processes:
        with pytest.raises(ConfigError, match=f"in {processes} processes"):
            check_ddp_launch(trainer, multirun=True)
    else:
        check_ddp_launch(trainer, multirun=True)
    monkeypatch.setenv("LOCAL_RANK", "0")  # torchrun (or SLURM) started this rank: Lightning starts none
    check_ddp_launch(trainer, multirun=True)


@pytest.mark.slow
def test_local_ddp_inside_a_sweep_is_refused(tiny_synthetic: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHED_FROM_OUTSIDE}
    result = subprocess.run(
        [sys.executable, "-m", "ffd.train", "-m", f"data.root={tiny_synthetic}", *TINY, "trainer.devices=2",
         "model.optimizer.lr=1e-3,1e-4"],
        cwd=tmp_path, env={**env, "HYDRA_FULL_ERROR": "0"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "hydra/launcher=slurm" in output and "Traceback" not in output
    assert not list((tmp_path / "outputs").glob("**/metrics.json"))


@pytest.mark.slow
def test_gradual_unfreeze_under_ddp_averages_the_backbone_gradients(
    tiny_synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backbone is frozen when DDP wraps the model and unfreezes at epoch 1: from then on its
    gradients must be averaged across ranks like the head's, so both ranks hold the same weights,
    those of one process with twice the batch."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    )
    # A ViT: LayerNorm normalizes each image on its own, so two ranks of 8 images compute what one
    # batch of 16 does (BatchNorm would normalize over each rank's 8: SyncBatchNorm needs GPUs).
    # SGD: an update proportional to the gradient, so float summation order stays at 1e-7.
    common = [f"data.root={tiny_synthetic}", *ARGS, "model=timm", "model.backbone=timm:test_vit",
              "model.freeze=gradual", "model.unfreeze_epochs=[1]", "model.optimizer._target_=torch.optim.SGD",
              "model.optimizer.lr=0.1",
              "+callbacks.save_backbone._target_=test_distributed.SaveBackbone"]  # fmt: skip
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    run([*common, "trainer=ddp", "trainer.devices=2", "data.loader.batch_size=8", f"hydra.run.dir={ddp}",
         f"+callbacks.save_backbone.folder={ddp / 'weights'}"], tmp_path)  # fmt: skip
    run([*common, "data.loader.batch_size=16", f"hydra.run.dir={single}",
         f"+callbacks.save_backbone.folder={single / 'weights'}"], tmp_path)  # fmt: skip

    def weights(run: Path, rank: int, when: str) -> dict[str, torch.Tensor]:
        return torch.load(run / "weights" / f"rank{rank}_{when}.pt", weights_only=True)

    start, frozen, end = (weights(ddp, 0, w) for w in ("start", "epoch0", "epoch2"))
    assert all(torch.equal(start[k], frozen[k]) for k in start)  # epoch 0: the backbone stays frozen
    assert all(not torch.equal(start[k], end[k]) for k in start if k.endswith("weight"))  # then it trains
    other = weights(ddp, 1, "epoch2")
    for k in end:
        assert torch.equal(end[k], other[k]), f"{k} differs between the ranks"
        torch.testing.assert_close(end[k], weights(single, 0, "epoch2")[k], rtol=0, atol=1e-5, msg=k)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_several_nodes_need_a_shared_run_folder(tiny_synthetic: Path, tmp_path: Path) -> None:
    """Two "nodes" (one process each, ranks set from outside as torchrun does): with a run folder
    each, every rank stops before training with the reason; with one folder, they train."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHED_FROM_OUTSIDE}
    args = [f"data.root={tiny_synthetic}", *TINY, "trainer=ddp", "trainer.devices=1", "trainer.num_nodes=2",
            "trainer.max_epochs=1", "data.cache.mode=none",
            "callbacks.progress_bar.refresh_rate=0"]  # fmt: skip

    def nodes(run_dirs: list[Path]) -> list[tuple[int, str]]:
        port, procs = free_port(), []
        for rank, run_dir in enumerate(run_dirs):
            ranks = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(rank),
                     "RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": "2"}  # fmt: skip
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "ffd.train", *args, f"hydra.run.dir={run_dir}"], cwd=run_dir.parent,
                env={**env, **ranks, "HYDRA_FULL_ERROR": "0"}, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            ))  # fmt: skip
        outputs = [p.communicate(timeout=300)[0] for p in procs]
        return [(p.returncode, out) for p, out in zip(procs, outputs, strict=True)]

    separate = [tmp_path / "node0" / "run", tmp_path / "node1" / "run"]
    for rank, (code, output) in enumerate(nodes(separate)):
        assert code == 2 and "needs a run folder that every node shares" in output, output[-3000:]
        assert "paths.output_dir" in output and "Traceback" not in output
        assert not (separate[rank] / "checkpoints").exists()  # stopped before training
    shared = tmp_path / "shared" / "run"
    for code, output in nodes([shared, shared]):
        assert code == 0, output[-3000:]
    assert (shared / "metrics.json").is_file() and not list(shared.glob(".shared-check-*"))
