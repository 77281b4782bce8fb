"""Keeping the same face across a video's frames.

The track starts at the largest face of the first frame with one; in each later frame it
takes the detection that overlaps the last tracked box most (by IoU), or failing that the
one whose centre is nearest, within one face side. A frame without such a face has none:
the crop would be someone else's, or the background.

The track is online: ``Tracker.update`` takes one frame's detections at a time and keeps only
the last tracked face, so a video's frames are tracked as they are decoded.
"""

from __future__ import annotations

from collections.abc import Sequence

from ffd.data.faces import Face, iou
from ffd.data.facts import Box


def _centre_gap(a: Box, b: Box) -> float:
    """Distance between the boxes' centres, in sides of box a."""
    side = max(a[2] - a[0], a[3] - a[1], 1e-6)
    dx, dy = (b[0] + b[2] - a[0] - a[2]) / 2, (b[1] + b[3] - a[1] - a[3]) / 2
    return float((dx * dx + dy * dy) ** 0.5 / side)


def next_face(last: Face | None, faces: Sequence[Face]) -> Face | None:
    """The detection that continues the track (``faces`` largest first, as detectors give them)."""
    if not faces:
        return None
    if last is None:
        return faces[0]
    best = max(faces, key=lambda f: iou(last.box, f.box))
    if iou(last.box, best.box) > 0:
        return best
    nearest = min(faces, key=lambda f: _centre_gap(last.box, f.box))
    return nearest if _centre_gap(last.box, nearest.box) <= 1.0 else None


class Tracker:
    """One face followed across frames, a frame at a time: only the last tracked face is kept."""

    def __init__(self) -> None:
        self.last: Face | None = None

    def update(self, faces: Sequence[Face]) -> Face | None:
        """The tracked face in the next frame (None if it has none), from its detections (largest first)."""
        face = next_face(self.last, faces)
        self.last = face or self.last
        return face


def track(detections: Sequence[Sequence[Face]]) -> list[Face | None]:
    """The tracked face of every frame (None where the frame has none), from each frame's detections."""
    tracker = Tracker()
    return [tracker.update(faces) for faces in detections]
