"""Scores broken down by CIPLAB metadata: difficulty, replaced part, number of parts.

Each group is "these fakes against all reals", so its AUROC answers: how well
does the model tell this kind of fake from a real face? Data sets without the
metadata (no fake has a difficulty or part bits) give no breakdowns.
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
    """``{"difficulty": {...}, "part": {...}, "num_parts": {...}}``, each group with n, AUROC, recall.

    ``recall`` is the share of that group's fakes called fake at ``threshold`` (on the logits' scale).
    """
    labels = torch.tensor([r.label for r in records])
    real = labels == REAL
    fakes = [(i, r) for i, r in enumerate(records) if r.label == FAKE]
    if not any(r.difficulty or r.parts for _, r in fakes):
        return {}
    groups: dict[str, dict[str, list[int]]] = {"difficulty": {}, "part": {}, "num_parts": {}}
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
        out[kind] = {}
        for name in order[kind]:
            if name not in members:
                continue
            idx = torch.tensor(members[name])
            mask = real.clone()
            mask[idx] = True
            out[kind][name] = {
                "n_fake": len(idx),
                "auroc": ranking(logits[mask], labels[mask])["auroc"],
                "recall": float((logits[idx] >= threshold).float().mean()),
            }
    return out
