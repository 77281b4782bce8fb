"""Image files: finding them, reading them, and decoding them (the one place files become RGB images)."""

from __future__ import annotations

import errno
import glob
import io
import math
import os
from pathlib import Path
from typing import cast

from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

from ffd.data.formats import IMAGE_FORMATS, IMAGE_SUFFIXES
from ffd.data.settings import Limits
from ffd.errors import FfdError


class ImageDecodeError(ValueError):
    """A file could not be read or decoded as an image."""


def read_file(path: str | Path) -> bytes:
    """A file's bytes; missing and unreadable files (broken symlinks, loops) raise ImageDecodeError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if path.is_symlink():
            raise ImageDecodeError(f"broken symlink: its target {os.readlink(path)} does not exist") from None
        raise ImageDecodeError("no such file") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ImageDecodeError("symlink loop: the link leads back to itself") from None
        raise ImageDecodeError(f"cannot read the file: {err.strerror or err}") from err
    return data


def decode_rgb(data: bytes, min_size: int | None, limits: Limits) -> Image.Image:
    """Decode an image file's bytes as upright 8-bit RGB, no larger than a model of input side
    ``min_size`` needs (``None``: full size).

    The steps (``ffd.deploy.predict_onnx.decode`` takes the same ones, and the model card lists them):

    1. Only the formats of ``IMAGE_FORMATS`` are opened (an MPO as the JPEG it is, an animation as
       its first frame); any other file is refused with its format's name, never decoded.
    2. The declared size is checked against ``limits`` before a pixel is decoded.
    3. JPEGs are decoded in draft mode: libjpeg scales the DCT by 1/2, 1/4 or 1/8 while decoding,
       as long as both sides stay >= ``min_size`` (a 600x600 CIPLAB file for a 224 model decodes at
       300x300, far faster than a full decode, and the model's resize hides the difference). Other
       formats decode at full size and, when both sides are >= 2 x ``min_size``, are reduced by
       ``k = min(width, height) // min_size`` (``Image.reduce``: the mean of each k x k box; the
       shorter side stays >= ``min_size``), with no full-size copy (``to_rgb``).
    4. Every mode becomes 8-bit RGB (``to_rgb``), then the EXIF orientation is applied (``transpose``).

    Raises:
        ImageDecodeError: the data is empty, truncated, corrupt, too large, not an image or in a
            format ffd does not read. Every error Pillow raises while decoding becomes one.
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        # Not closed: closing a Pillow image drops its pixels, and an in-memory file needs no closing.
        img = _open(data)
        check_size(img.width, img.height, limits)
        jpeg = img.format in JPEG_FORMATS
        if jpeg and min_size:
            img.draft("RGB", (min_size, min_size))
        img.load()
        orientation = exif_orientation(img)
        k = 1 if jpeg else reduce_factor(img.size, min_size)
        return transpose(to_rgb(img, k), orientation)
    except ImageDecodeError:
        raise
    except Exception as err:  # Pillow raises anything on hostile input: OSError, SyntaxError, struct.error...
        raise ImageDecodeError(f"{type(err).__name__}: {err}" if str(err) else type(err).__name__) from err


# The formats ffd opens, as Pillow names them (``IMAGE_FORMATS``), and as messages name them.
_OPENED = tuple(IMAGE_FORMATS)
_NAMES = [{"WEBP": "WebP"}.get(name, name) for name in IMAGE_FORMATS]
# A JPEG with extra frames opens as an MPO (a JpegImageFile): decoded as the JPEG it is.
JPEG_FORMATS = frozenset({"JPEG", "MPO"})


def _open(data: bytes) -> ImageFile.ImageFile:
    """Open (not decode) an image in one of ``IMAGE_FORMATS``; any other is refused, by name."""
    try:
        return Image.open(io.BytesIO(data), formats=_OPENED)
    except UnidentifiedImageError:
        pass
    try:  # only to name the format: opened with every plugin, never loaded (EPS would run Ghostscript)
        name = Image.open(io.BytesIO(data)).format
    except Exception:
        name = None
    if name and name not in IMAGE_FORMATS and name not in JPEG_FORMATS:
        raise ImageDecodeError(
            f"format {name} is not accepted: ffd reads {', '.join(_NAMES[:-1])} and {_NAMES[-1]} "
            "(the first frame)"
        )
    raise ImageDecodeError(f"not an image: no format ffd reads ({', '.join(_NAMES)})")


def check_size(width: int, height: int, limits: Limits) -> None:
    """Refuse, before decoding, an image whose declared size is outside ``limits``."""
    size = f"{width} x {height} pixels"
    if width * height > limits.max_pixels:
        raise ImageDecodeError(
            f"{size}: more than the limit of {limits.max_pixels:,} pixels (limits.max_pixels)"
        )
    short, long = min(width, height), max(width, height)
    if short < limits.min_side:
        raise ImageDecodeError(
            f"{size}: the shorter side is under the limit of {limits.min_side} pixels (limits.min_side)"
        )
    if long > limits.max_aspect * short:
        raise ImageDecodeError(
            f"{size}: the longer side is {long / short:.3g} times the shorter, more than the limit of "
            f"{limits.max_aspect:g} (limits.max_aspect)"
        )


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation (1 to 8) of a loaded image; 1 where there is none, or it is corrupt."""
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # corrupt EXIF: struct.error, SyntaxError, TypeError, ValueError...
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


# EXIF orientation -> the transpose that makes the image upright (what ImageOps.exif_transpose does).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def transpose(img: Image.Image, orientation: int) -> Image.Image:
    """The image as the camera was held (``orientation``: EXIF's, 1 to 8)."""
    method = _UPRIGHT.get(orientation)
    return img if method is None else img.transpose(method)


def reduce_factor(size: tuple[int, int], min_size: int | None) -> int:
    """The integer factor a non-JPEG image is reduced by: its shorter side // ``min_size`` when both
    sides are >= 2 x ``min_size`` (so the shorter side stays >= ``min_size``), else 1."""
    short = min(size)
    return short // min_size if min_size and short >= 2 * min_size else 1


# Modes Image.reduce() cannot average as they are -> the conversions that come first: it refuses 1, P
# and I;16*, it would average PA's palette indices, and it would weigh LA's and RGBA's colours by their
# alpha, where ffd drops alpha (as convert("RGB") does). L, RGB, CMYK, YCbCr, LAB, I and F are reduced
# as they are.
BEFORE_REDUCE: dict[str, tuple[str, ...]] = {
    "1": ("L",),
    "P": ("RGB",),
    "PA": ("RGB",),
    "LA": ("L",),
    "La": ("LA", "L"),
    "RGBA": ("RGB",),
    "RGBa": ("RGB",),
    "I;16": ("I",),
    "I;16L": ("I",),
    "I;16B": ("I",),
    "I;16N": ("I",),
}
BAND_PIXELS = 1 << 20  # images are converted a band of rows of about this many pixels at a time


def to_rgb(img: Image.Image, k: int) -> Image.Image:
    """A decoded image as 8-bit RGB, reduced ``k`` times (``Image.reduce``: the mean of each k x k box).

    Per pixel: the conversions of ``BEFORE_REDUCE``; ``reduce(k)``; 8 bits: 16-bit greyscale
    (``I;16*``) v / 256, 32-bit integer and float greyscale (``I``, ``F``: their range is the file's)
    min-max to 0..255 over the decoded image (its lowest value black, its highest white; a constant
    image black); ``convert("RGB")``. Done on bands of rows (a multiple of ``k`` rows, about
    ``BAND_PIXELS`` pixels), so the decoded image is the only full-size one: the same pixels as each
    step on the whole image.
    """
    steps = BEFORE_REDUCE.get(img.mode, ())
    scale: float | None = None
    offset = 0.0
    if img.mode.startswith("I;16"):
        scale = 1 / 256
    elif img.mode in ("I", "F"):
        lo, hi = cast(tuple[float, float], img.getextrema())  # one band
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ImageDecodeError(f"{img.mode} image with values that are not finite (from {lo} to {hi})")
        scale = 255 / (hi - lo) if hi > lo else 0.0
        offset = -lo * scale
    if not steps and scale is None:  # reduced as it is: no full-size copy
        small = img.reduce(k) if k > 1 else img
        return small if small.mode == "RGB" else small.convert("RGB")
    width, height = img.size
    out = Image.new("RGB", (-(-width // k), -(-height // k)))
    rows = k * max(1, BAND_PIXELS // (width * k))
    for top in range(0, height, rows):
        band = img.crop((0, top, width, min(height, top + rows)))
        for mode in steps:
            band = band.convert(mode)
        if k > 1:
            band = band.reduce(k)
        if scale is not None:
            band = band.point(lambda v: v * scale + offset).convert("L")
        out.paste(band.convert("RGB"), (0, top // k))
    return out


def load_rgb(path: str | Path, min_size: int | None, limits: Limits) -> Image.Image:
    """Read and decode an image file (see ``decode_rgb``)."""
    return decode_rgb(read_file(path), min_size, limits)


def is_file_entry(path: Path) -> bool:
    """A file, or a symlink that is not a folder's (broken ones and loops too: they get a row)."""
    return path.is_file() or (path.is_symlink() and not path.is_dir())


def image_files(folder: Path) -> list[Path]:
    """Every image file under a folder, recursively, by name (symlinked files included)."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and is_file_entry(p))


def expand_input(spec: str) -> list[Path]:
    """The files an ``input`` names: a file, a folder (recursive), a glob, or a .txt list of paths."""
    path = Path(spec).expanduser()
    if any(c in spec for c in "*?["):
        files = sorted(p for p in map(Path, glob.glob(spec, recursive=True)) if is_file_entry(p))
    elif path.is_dir():
        files = image_files(path)
    elif path.suffix.lower() == ".txt" and path.is_file():
        lines = [line.strip() for line in path.read_text().splitlines()]
        files = [Path(line) if Path(line).is_absolute() else path.parent / line for line in lines if line]
    elif is_file_entry(path):
        files = [path]
    else:
        raise FfdError(f"input={spec} is not an image, a folder, a glob or a .txt list of paths.")
    if not files:
        raise FfdError(f"input={spec} names no image files.")
    return files
