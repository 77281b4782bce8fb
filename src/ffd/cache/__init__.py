"""Caches that take repeated work out of the epoch loop (see features.py and pixels.py)."""

from ffd.cache.features import Encoder, FeatureDataset, build_feature_cache, feature_key, state_fingerprint
from ffd.cache.pixels import PixelDataset

__all__ = [
    "Encoder",
    "FeatureDataset",
    "PixelDataset",
    "build_feature_cache",
    "feature_key",
    "state_fingerprint",
]
