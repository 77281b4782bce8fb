"""The data set's facts, written once: labels, splits, CIPLAB's file-name scheme and face geometry.

CIPLAB ("Real and Fake Face Detection", Kaggle ``ciplab/real-and-fake-face-detection``)
holds 600x600 aligned frontal faces. Real files are ``real_00001.jpg`` ...; a fake is
``{easy|mid|hard}_{id}_{LRNM}.jpg``, one bit per part replaced in Photoshop (left eye,
right eye, nose, mouth; "left" is the image-left side). The difficulty labels are the
authors' subjective ones: ffd reports by them and never trains on them.

Every module that needs one of these facts (the manifest, the synthetic generator,
Grad-CAM localization, eval's breakdowns, predict's labels) imports it from here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

# Labels: "positive" means fake; p_fake is the probability of class FAKE, the sigmoid of the model's
# logit (its calibrated log-odds of fake), which ranks and decides: it never saturates as p_fake does.
REAL, FAKE = 0, 1
CLASS_NAMES = ("real", "fake")
SPLITS = ("train", "val", "test")
# CIPLAB's class folders (the Kaggle archive's tree is real_and_fake_face/<folder>/), by label.
CIPLAB_FOLDERS = ("training_real", "training_fake")
CIPLAB_TREE = "real_and_fake_face"

PARTS = ("left_eye", "right_eye", "nose", "mouth")  # the order of the LRNM bits
DIFFICULTIES = ("easy", "mid", "hard")
FAKE_NAME = re.compile(r"^(easy|mid|hard)_(\d+)_([01]{4})$")

# The aligned face: where each part lies (x0, y0, x1, y1) on the 600x600 canvas. The
# synthetic generator replaces exactly these boxes; CIPLAB's aligned faces put the parts
# at about the same places, so a heatmap can be scored against them.
FACE_SIZE = 600
PART_BOXES: dict[str, tuple[int, int, int, int]] = {
    "left_eye": (175, 212, 285, 300),
    "right_eye": (315, 212, 425, 300),
    "nose": (258, 300, 342, 378),
    "mouth": (228, 380, 372, 452),
}
Box = tuple[float, float, float, float]


UNCERTAIN = "uncertain"  # the answer inside a model's abstention band (model.abstain)


def label_name(logit: float, threshold_logit: float, band: Mapping[str, float] | None = None) -> str:
    """The answer a logit gets at a decision threshold on logits: ``logit >= threshold`` means fake;
    inside an abstention band's open interval (``low``, ``high``) the answer is ``uncertain``."""
    if band is not None and band["low"] < logit < band["high"]:
        return UNCERTAIN
    return CLASS_NAMES[int(logit >= threshold_logit)]


def p_fake(logit: float) -> float:
    """The probability of fake a logit (log-odds of fake) stands for, in float64."""
    return 1 / (1 + math.exp(-logit)) if logit >= 0 else math.exp(logit) / (1 + math.exp(logit))


def logit_of(p: float) -> float:
    """The logit of a probability (a threshold saved before ffd kept logits), +-inf at 0 and 1."""
    return math.log(p) - math.log1p(-p) if 0 < p < 1 else math.copysign(math.inf, p - 0.5)


def real_name(index: int) -> str:
    """CIPLAB's name of the index-th real image (from 1)."""
    return f"real_{index:05d}.jpg"


def fake_name(difficulty: str, index: int, bits: str) -> str:
    """CIPLAB's name of a fake: difficulty, its index within that difficulty, the LRNM part bits."""
    return f"{difficulty}_{index}_{bits}.jpg"


def parse_fake_name(path: str | Path) -> tuple[str, str]:
    """Difficulty and part bits of a CIPLAB fake file name, or ("", "") if it has none."""
    m = FAKE_NAME.match(Path(path).stem)
    return (m.group(1), m.group(3)) if m else ("", "")


def replaced_parts(bits: str) -> list[str]:
    """Part names from CIPLAB part bits (left eye, right eye, nose, mouth), e.g. ``"1010"``."""
    return [part for part, bit in zip(PARTS, bits, strict=True) if bit == "1"] if bits else []


def part_boxes(parts: Sequence[str], size: int) -> list[Box]:
    """The boxes of the named parts, scaled from the aligned face to a size x size image.

    Exact for synthetic fakes up to the generator's pose jitter (a few pixels).
    """
    scale = size / FACE_SIZE
    return [tuple(v * scale for v in PART_BOXES[part]) for part in parts]  # type: ignore[misc]
