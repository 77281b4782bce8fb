"""Process-level settings that every ffd entry point applies before it does real work."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import platform
import re
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch is imported where it is used: a task's settings are checked (and a bad one reported) before
# the seconds that importing torch and Lightning take.
log = logging.getLogger(__name__)

# glibc mallopt() parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def tune_malloc() -> bool:
    """Stop glibc from handing freed memory back to the OS after every batch.

    PyTorch's CPU kernels allocate and free the same large buffers on every
    forward pass. By default glibc serves them with mmap and returns them with
    munmap, so each batch pays page faults on fresh memory: MobileNetV2 runs
    3-5x slower on a small CPU than with the memory kept. Setting the options
    at run time (instead of MALLOC_* environment variables) means users get
    the speed without knowing about it. Set ``FFD_TUNE_MALLOC=0`` to keep
    glibc's defaults.

    Returns:
        Whether the allocator settings were changed.
    """
    if os.environ.get("FFD_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    log.debug("glibc malloc tuned: %s", ok)
    return ok


def _cpuinfo(key: str) -> str | None:
    """The first ``key`` line's value in /proc/cpuinfo (None where there is none)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return None


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo), or what platform knows."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The vector ISA torch's CPU kernels use here (``AVX2``, ``AVX512``), with AVX-512 BF16 and AMX
    if the CPU has them: what tells apart, for speed, CPUs with the same model name."""
    import torch

    flags = set((_cpuinfo("flags") or "").split())
    extras = [name for flag, name in (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX")) if flag in flags]
    return ", ".join([torch.backends.cpu.get_cpu_capability(), *extras])


def fast_cpu_bf16() -> bool:
    """Whether this CPU runs bf16 convolutions fast: natively (AVX-512 BF16, AMX) or on AVX-512.

    On an AVX2-only CPU oneDNN emulates bf16, which runs far slower than fp32 there.
    """
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # the check is private API: fall back to the ISA torch uses
        return torch.backends.cpu.get_cpu_capability().startswith(("AVX512", "AMX"))


def mixed_precision(accelerator: str) -> str:
    """The training precision for an accelerator: fp16 mixed on CUDA; on a CPU bf16 mixed where it is
    fast (``fast_cpu_bf16``), else fp32.

    Where bf16 is fast, autocast with channels-last runs the backbone well ahead of fp32 and keeps
    the seed recipe's accuracy (measured: see docs/performance.md).
    """
    import torch

    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        return "16-mixed"
    return "bf16-mixed" if fast_cpu_bf16() else "32-true"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a Lightning precision ("16-mixed", "bf16-mixed"); None for full precision."""
    import torch

    return {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(str(precision))


def is_rank_zero() -> bool:
    """True in the process that writes files: rank 0 under DDP (known before any trainer exists)."""
    # Imported here: ONNX inference uses this module and never needs Lightning.
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _not_noise(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return "Tip:" not in message and not re.match(r"`Trainer.fit` stopped: `max_epochs=\d+` reached", message)


def silence_known_noise() -> None:
    """Silence what Lightning and torch print during training that a user can't act on.

    Each filter names one message, so anything new still shows.
    """
    # Lightning's advertisements ("Tip: ... install litlogger / litmodels") say nothing about the run;
    # "`Trainer.fit` stopped: `max_epochs=N` reached." lands in the middle of the last epoch's bar
    # (which then prints twice) and tells what the bar already shows. Other reasons to stop still show.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_not_noise)
    # Lightning 2.6's own pytree helper uses a torch API that torch 2.14 deprecates: Lightning's to
    # change, nothing in ffd or the user's config triggers it.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # A frozen backbone is in eval mode on purpose: its BatchNorm statistics stay fixed, as with
    # Keras' trainable=False (ffd.models.module.FakeFaceClassifier.train).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
