"""After training: the best checkpoint as it ships, calibrated on val and scored on val and test.

Training validates on whatever the fit ran (cached features of a bf16 backbone on CPU,
augmentation-free views), which is not the model a user ships. This step scores the
best checkpoint's val and test images the way eval, predict and every export do
(``ffd.engine.scorers.CheckpointScorer``: decoded pixels, fp32), fits the
temperature on val, chooses the decision threshold on the calibrated val logits,
and writes temperature, threshold and the resulting metrics into the checkpoint.
Every figure a run reports is then that of the file it ships.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ffd.data.decoding import Decoder
from ffd.data.facts import FAKE, p_fake
from ffd.data.records import Record
from ffd.engine.scorers import CheckpointScorer
from ffd.engine.scoring import score_files
from ffd.files import publish_file
from ffd.metrics.calibration import brier, ece, fit_temperature
from ffd.metrics.scores import at_threshold, choose_threshold, ranking
from ffd.metrics.selective import choose_band, selective_scores
from ffd.models.module import FakeFaceClassifier
from ffd.models.shipped import INFERENCE_PRECISION, calibrated

log = logging.getLogger(__name__)


def scored_logits(
    scorer: CheckpointScorer, records: Sequence[Record], batch_size: int, decode: Decoder
) -> torch.Tensor:
    """The shipped model's uncalibrated logits (N, 2) for records, in order."""
    batches = score_files([r.path for r in records], scorer.raw_logits, batch_size, decode)
    return torch.cat([batch.all_ok("An image became unreadable during training") for batch in batches])


def split_metrics(
    split: str, logits: torch.Tensor, labels: torch.Tensor, t: float, threshold: float, band: dict | None
) -> dict:
    """A split's scores at temperature t: ranking (of the logit of fake), accuracy at the threshold (a
    logit) and at p_fake 0.5, calibration; with an abstention band, coverage and selective risk."""
    probs, logit = calibrated(logits, t)
    scores = {
        **ranking(logit, labels),
        "acc": at_threshold(logit, labels, threshold)["acc"],
        "acc_at_0.5": at_threshold(logit, labels, 0.0)["acc"],
        "loss": float(F.cross_entropy(logits / t, labels)),
        "ece": ece(probs[:, FAKE], labels),
        "ece_uncalibrated": ece(logits.softmax(-1)[:, FAKE], labels),
        "brier": brier(probs[:, FAKE], labels),
    }
    if band is not None:
        selective = selective_scores(logit, labels, threshold, band, n_boot=0, seed=0)
        scores |= {k: selective[k] for k in ("coverage", "selective_risk")}
    return {f"{split}/{k}": v for k, v in scores.items()}


def calibrate(
    scorer: CheckpointScorer,
    rows: Mapping[str, Sequence[Record]],
    method: str,
    batch_size: int,
    test: bool,
    decode: Decoder,
) -> dict[str, float]:
    """Calibrate a checkpoint's model on ``rows["val"]`` and score it there (and on ``rows["test"]`` with
    ``test``), as eval and predict score it (``scorer``, files read by ``decode``); the model gets the
    temperature, threshold and metrics (see ``store``)."""
    model = scorer.model
    labels = {s: torch.tensor([r.label for r in rows[s]]) for s in ("val", "test")}
    logits = scored_logits(scorer, rows["val"], batch_size, decode)
    t = fit_temperature(logits, labels["val"])
    threshold = choose_threshold(calibrated(logits, t)[1], labels["val"], method)
    target = model.hparams.get("abstain")
    band = choose_band(calibrated(logits, t)[1], labels["val"], threshold, target) if target else None
    if band is not None and not band["met"]:
        log.warning("model.abstain=%s: no band meets it on val; the model answers uncertain to every image.",
                    target)  # fmt: skip
    metrics = {
        "val/temperature": t,
        "val/threshold": p_fake(threshold),
        "val/threshold_logit": threshold,
        **split_metrics("val", logits, labels["val"], t, threshold, band),
    }
    if test:
        test_logits = scored_logits(scorer, rows["test"], batch_size, decode)
        metrics |= split_metrics("test", test_logits, labels["test"], t, threshold, band)
    model.temperature, model.threshold_logit, model.final_metrics = t, threshold, metrics
    model.abstain_band = band
    log.info(
        "Calibrated on val: temperature %.3g, threshold %.4g (logit %.4g)", t, p_fake(threshold), threshold
    )
    return metrics


def store(model: FakeFaceClassifier, ckpt_path: str | Path) -> None:
    """Write a calibrated model's temperature, threshold and metrics into its checkpoint (atomically)."""
    raw = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    raw["ffd"] |= {
        "temperature": model.temperature,
        "threshold": p_fake(model.threshold_logit),
        "threshold_logit": model.threshold_logit,
        "metrics": model.final_metrics,
        "precision": INFERENCE_PRECISION,
        "abstain": model.abstain_band,
    }
    tmp = Path(f"{ckpt_path}.tmp")
    torch.save(raw, tmp)
    publish_file(tmp, Path(ckpt_path))
