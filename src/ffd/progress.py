"""Progress bars for ffd's own long steps, in the style of Lightning's training bars."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

# Lightning's TQDMProgressBar.BAR_FORMAT, so ffd's bars and the epoch bars look alike.
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"


def progress(items: Iterable[Any] | None, desc: str, total: int | None = None, unit: str = "it") -> tqdm:
    """A progress bar on stdout, as Lightning's: iterate over ``items``, or ``update()`` it by hand.

    It shows only on a terminal (tqdm hides it when stdout is not a TTY, so logs and CI
    output get no carriage-return updates), and under DDP only on rank 0 (read from the
    launcher's environment, as Lightning does, so ONNX inference needs no Lightning).
    """
    rank_zero = all(os.environ.get(v, "0") == "0" for v in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))
    return tqdm(
        items, desc=desc, total=total, unit=unit, leave=True, dynamic_ncols=True, file=sys.stdout,
        smoothing=0, bar_format=BAR_FORMAT, disable=None if rank_zero else True,
    )  # fmt: skip
