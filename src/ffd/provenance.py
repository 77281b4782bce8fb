"""Where a result came from: ffd's version (and its git commit when it runs from a source checkout),
Python's and the main packages' versions."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "torchvision", "lightning", "timm", "torchmetrics", "hydra-core", "numpy", "pillow")
# ffd's source checkout, when it runs from one (src/ffd in a folder with ffd's pyproject.toml).
CHECKOUT = Path(__file__).resolve().parents[2]


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def source_checkout() -> Path | None:
    """The checkout ffd runs from (an editable install), or None for an installed package, whose
    folder (site-packages) may sit inside some other repository."""
    pyproject = CHECKOUT / "pyproject.toml"
    is_ffd = pyproject.is_file() and 'name = "ffd"' in pyproject.read_text(errors="replace")
    return CHECKOUT if is_ffd and (CHECKOUT / "src" / "ffd").is_dir() else None


def git_commit() -> str | None:
    """The source checkout's commit (with ``-dirty`` if it has uncommitted changes), or None (an
    installed package, or no git)."""
    if (checkout := source_checkout()) is None:
        return None
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=checkout, capture_output=True, text=True, timeout=10, check=True,
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
