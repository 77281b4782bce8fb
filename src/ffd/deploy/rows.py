"""The rows ``ffd predict`` and the service report, one per input, and the file they are written to."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ffd.data.facts import label_name, p_fake
from ffd.files import atomic_text

FIELDS = ["path", "p_fake", "logit", "label", "status", "message"]
# Video rows add the frame (empty on the video's own row), the face crops scored and the sampled frames
# without a face (on the video's row).
VIDEO_FIELDS = [*FIELDS, "frame", "frames", "no_face"]


def result_row(
    path: str, status: str, message: str, logit: float | None, threshold_logit: float,
    band: Mapping[str, float] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """An input's row (``FIELDS``): its score (p_fake, and the logit that decides) and label (real, fake,
    or uncertain inside the model's abstention ``band``), or why it has none (``status``, ``message``)."""
    row = {"path": path, "p_fake": None, "logit": logit, "label": "", "status": status, "message": message}
    if logit is not None:
        row |= {"p_fake": p_fake(logit), "label": label_name(logit, threshold_logit, band)}
    return row


def write_rows(output: Path, fields: Sequence[str], rows: Iterable[dict[str, Any]]) -> Counter:
    """Write ``rows`` to ``output`` (.csv, or .jsonl: one JSON object a line) in place of what was there
    once all are written (``ffd.files.atomic_text``); the inputs' own rows (not a video's frame rows)
    counted by label (real, fake, uncertain) or status (unreadable, no_face)."""
    counts: Counter = Counter()
    with atomic_text(output) as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="") if output.suffix == ".csv" else None
        if writer:
            writer.writeheader()
        for row in rows:
            writer.writerow(row) if writer else fh.write(json.dumps(row) + "\n")  # \\udcXX for odd names
            if row.get("frame", "") == "":
                counts[row["label"] or row["status"]] += 1
    return counts
