"""Caches that take repeated work out of the epoch loop: backbone features (features.py) or
decoded pixels (pixels.py). Which one a run uses is its ``data.cache`` setting."""

from __future__ import annotations

from ffd.data.cache.features import Encoder
from ffd.errors import ConfigError

CACHE_MODES = ("auto", "none", "pixels", "features")


def cache_mode(requested: str, encoder: Encoder | None) -> str:
    """The cache a run uses: ``auto`` is features for a frozen backbone (``encoder``), else none.

    Raises:
        ConfigError: an unknown mode, or features for a backbone that trains.
    """
    if requested not in CACHE_MODES:
        raise ConfigError(f"data.cache must be one of {CACHE_MODES}, got {requested!r}.")
    if requested == "features" and encoder is None:
        raise ConfigError(
            "data.cache=features needs a frozen backbone (model.freeze=frozen): a backbone that "
            "trains changes its features every step. Use data.cache=pixels to decode images once."
        )
    if requested == "auto":
        return "features" if encoder is not None else "none"
    return requested
