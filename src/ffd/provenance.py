"""Where a result came from: ffd version, git commit, package versions."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "torchvision", "lightning", "timm", "torchmetrics", "hydra-core", "numpy", "pillow")
SOURCE_DIR = Path(__file__).resolve().parent


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The source checkout's commit (with ``-dirty`` if it has uncommitted changes), or None."""
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=SOURCE_DIR, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return commit or None


def provenance() -> dict[str, Any]:
    """ffd's version and commit, Python's and the main packages' versions."""
    return {
        "ffd": version("ffd"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "packages": {p: version(p) for p in PACKAGES},
    }
