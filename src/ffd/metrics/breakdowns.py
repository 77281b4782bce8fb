"""Scores broken down by CIPLAB metadata (difficulty, replaced part, number of parts) and by method.

Each group is "these fakes against all reals", so its AUROC answers: how well
does the model tell this kind of fake from a real face? Data sets without the
metadata (no fake has a difficulty or part bits) give no CIPLAB breakdowns; images
without a method (``Record.method``: the generator folder they came from) none by method.

Reals can carry a method too (a GenImage generator's ``nature/`` images): a method's
group is still scored against all reals, like every other group, and, when some reals
share its method, also against those alone (``auroc_own_reals``: GenImage's protocol,
each generator's own test set). Video rows are left out of the method breakdown: the
video report breaks them down by method per video (``ffd.metrics.video``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ffd.data.facts import DIFFICULTIES, FAKE, PARTS, REAL, replaced_parts
from ffd.data.records import Record
from ffd.metrics.scores import ranking


def breakdowns(
    records: Sequence[Record], logits: torch.Tensor, threshold: float
) -> dict[str, dict[str, Any]]:
    """``{"difficulty": {...}, "part": {...}, "num_parts": {...}, "method": {...}}``, each group with
    n_fake, AUROC against all reals, recall (a method's also n_real and auroc_own_reals when some reals
    share it). The CIPLAB kinds are there when a fake has their metadata, ``method`` when an image
    fake has a method.

    ``logits`` are the logits of fake; ``recall`` is the share of that group's fakes called fake at
    ``threshold`` (a logit).
    """
    labels = torch.tensor([r.label for r in records])
    real = labels == REAL
    fakes = [(i, r) for i, r in enumerate(records) if r.label == FAKE]
    groups: dict[str, dict[str, list[int]]] = {}
    if any(r.difficulty or r.parts for _, r in fakes):
        groups = {"difficulty": {}, "part": {}, "num_parts": {}}
        for i, r in fakes:
            if r.difficulty:
                groups["difficulty"].setdefault(r.difficulty, []).append(i)
            if r.parts:
                parts = replaced_parts(r.parts)
                for part in parts:
                    groups["part"].setdefault(part, []).append(i)
                groups["num_parts"].setdefault(str(len(parts)), []).append(i)
    order = {"difficulty": list(DIFFICULTIES), "part": list(PARTS), "num_parts": ["0", "1", "2", "3", "4"]}
    out: dict[str, dict[str, Any]] = {}
    for kind, members in groups.items():
        out[kind] = {
            name: _group(torch.tensor(members[name]), real, logits, labels, threshold)
            for name in order[kind]
            if name in members
        }
    if methods := _by_method(records, real, logits, labels, threshold):
        out["method"] = methods
    return out


def _group(
    fakes: torch.Tensor, reals: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, threshold: float
) -> dict[str, Any]:
    """n_fake, AUROC of these fakes (indices) against those reals (a mask), and their recall."""
    mask = reals.clone()
    mask[fakes] = True
    return {
        "n_fake": len(fakes),
        "auroc": ranking(logits[mask], labels[mask])["auroc"],
        "recall": float((logits[fakes] >= threshold).float().mean()),
    }


def _by_method(
    records: Sequence[Record],
    real: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    threshold: float,
) -> dict[str, dict[str, Any]]:
    """Each method's image fakes against all image reals (and against the reals of its own method)."""
    fakes: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if r.label == FAKE and r.method and not r.video:
            fakes.setdefault(r.method, []).append(i)
    reals = real & torch.tensor([not r.video for r in records], dtype=torch.bool)
    out = {}
    for name in sorted(fakes):
        out[name] = _group(torch.tensor(fakes[name]), reals, logits, labels, threshold)
        own = reals & torch.tensor([r.method == name for r in records], dtype=torch.bool)
        if own.any():
            own_reals = _group(torch.tensor(fakes[name]), own, logits, labels, threshold)["auroc"]
            out[name] |= {"n_real": int(own.sum()), "auroc_own_reals": own_reals}
    return out
