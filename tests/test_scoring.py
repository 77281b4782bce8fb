"""The one scoring path: every caller that scores files goes through ``score_files``, each file decoded
once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import LIMITS, write_jpegs

from ffd.data.decoding import Decoder, Item
from ffd.data.records import read_manifest
from ffd.engine import scoring
from ffd.engine.scorers import CheckpointScorer, load_scorer
from ffd.models.checkpoint import load_checkpoint, run_folder


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Counts, per test: files decoded (``decoded``), items that went through ``score_files``'s batching
    (``scored``) and its calls (``calls``)."""
    counts: Counter = Counter()
    real_batches, real_decode = scoring.batches, Decoder.decode

    def batches(items, batch_size: int) -> Iterator:
        counts["calls"] += 1
        for group, x in real_batches(items, batch_size):
            counts["scored"] += len(group)
            yield group, x

    def decode(self: Decoder, path: Path, data: bytes) -> Item:
        counts["decoded"] += 1
        return real_decode(self, path, data)

    monkeypatch.setattr(scoring, "batches", batches)
    monkeypatch.setattr(Decoder, "decode", decode)
    return counts


def test_score_files_keeps_order_and_failures(tmp_path: Path, passes: Counter) -> None:
    good = write_jpegs(tmp_path, ["a.jpg", "b.jpg", "c.jpg"], size=40)
    (tmp_path / "bad.jpg").write_text("no")
    odd = write_jpegs(tmp_path, ["d.jpg"], size=50)
    files = [good[0], tmp_path / "bad.jpg", good[1], odd[0], good[2]]
    seen: list[tuple[int, ...]] = []

    def run(x: torch.Tensor) -> list[int]:
        seen.append(tuple(x.shape))
        return list(range(len(x)))

    out = list(scoring.score_files(files, run, 2, Decoder(32, LIMITS)))
    assert [it.path.name for b in out for it in b.items] == [f.name for f in files]
    assert [it.status for b in out for it in b.items].count("unreadable") == 1
    assert seen == [(2, 40, 40, 3), (1, 50, 50, 3), (1, 40, 40, 3)]  # a batch closes before another size
    assert passes == Counter(calls=1, scored=5, decoded=5)  # each file read and decoded once
    with pytest.raises(TypeError, match="needs a Decoder"):
        next(scoring.score_files(files, run, 2))


@pytest.fixture(scope="module")
def test_files(trained) -> list[Path]:
    ckpt, _ = trained
    return [
        Path(r.path) for r in read_manifest(run_folder(ckpt) / "manifest.csv") if r.ok and r.split == "test"
    ]


def check(passes: Counter, files: int, caller: str) -> None:
    assert passes["calls"] == 1 and passes["scored"] == files and passes["decoded"] == files, (caller, passes)


def test_every_caller_scores_through_it(
    trained, test_files: list[Path], passes: Counter, tmp_path: Path
) -> None:
    """Calibration, eval, predict, Grad-CAM, the export's parity check, the robustness sweep and the
    service's batcher: one pass of score_files each, every file decoded once."""
    from ffd.data.decoding import pixels
    from ffd.data.images import DecodedImages
    from ffd.deploy.exporting import parity_batch
    from ffd.deploy.predicting import predict
    from ffd.engine.gradcam import explain_files
    from ffd.evaluation.evaluating import score
    from ffd.evaluation.robustness import _score
    from ffd.service.batcher import Batcher
    from ffd.training.calibrating import scored_logits

    ckpt, _ = trained
    n = len(test_files)
    scorer = CheckpointScorer(load_checkpoint(ckpt), "torch", None)
    records = [r for r in read_manifest(run_folder(ckpt) / "manifest.csv") if r.ok and r.split == "test"]

    callers: dict[str, tuple[Callable[[], object], int]] = {
        "calibration": (lambda: scored_logits(scorer, records, 8, Decoder(64, LIMITS)), n),
        "eval": (lambda: score(scorer, records, 8, DecodedImages(pixels, 64, LIMITS), "gradcam"), n),
        "predict": (lambda: list(predict(load_scorer(ckpt, "torch", None), test_files, 8, LIMITS)), n),
        "Grad-CAM": (lambda: list(explain_files(scorer.model, test_files, "gradcam", 8, LIMITS)), n),
        "export parity": (lambda: parity_batch(scorer, ckpt, 4, LIMITS), None),
    }
    for name, (call, expected) in callers.items():
        passes.clear()
        call()
        if expected is None:  # stops at the first full batch: the files it read, each once
            assert passes["calls"] == 1 and 4 <= passes["scored"] == passes["decoded"] <= n, (name, passes)
        else:
            check(passes, expected, name)

    # Decoded already: the robustness sweep's perturbed images and the service's uploads.
    images = [Decoder(64, LIMITS)(f).image for f in test_files[:6]]
    passes.clear()
    _score(scorer, [im.permute(2, 0, 1) for im in images], [str(f) for f in test_files[:6]], 4)
    assert passes["calls"] == 1 and passes["scored"] == 6 and passes["decoded"] == 0

    async def serve() -> list[float]:
        batcher = Batcher(scorer.start_logit, 4, 0.05, 16, ThreadPoolExecutor(1))
        batcher.start()
        items = [Item(f, "ok", image=im) for f, im in zip(test_files, images, strict=False)]
        scores = await asyncio.gather(*(batcher.score(it) for it in items))
        await batcher.stop()
        return scores

    passes.clear()
    asyncio.run(serve())
    assert passes["scored"] == 6 and passes["decoded"] == 0 and passes["calls"] >= 1


@pytest.mark.parametrize("runtime", ["torch", "openvino"])
def test_started_batches_give_the_logits_of_logit(trained, test_files: list[Path], runtime: str) -> None:
    """``start_logit`` (the service's path) gives ``logit``'s values, with several batches started
    before the first is finished where the runtime runs in threads of its own (OpenVINO)."""
    from ffd.engine.runtimes.chooser import available

    if not available(runtime):
        pytest.skip(f"needs the optional {runtime} package")
    ckpt, _ = trained
    scorer = CheckpointScorer(load_checkpoint(ckpt), runtime, None)
    scorer.warm_up(4)
    assert scorer.in_flight == (2 if runtime == "openvino" else 1)
    images = torch.stack([Decoder(64, LIMITS)(f).image for f in test_files[:6]])
    batches = [images[:4], images[4:], images[1:3]]
    started = [scorer.start_logit(x) for x in batches]
    for x, s in zip(batches, started, strict=True):
        torch.testing.assert_close(s.finish(s.trunk.result()), scorer.logit(x), atol=1e-5, rtol=0)
