"""Image files: finding them, reading them, and decoding them (the one place files become RGB images)."""

from __future__ import annotations

import errno
import glob
import io
import os
from pathlib import Path

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from ffd.errors import FfdError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


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


def decode_rgb(data: bytes, min_size: int | None, max_pixels: int | None = None) -> Image.Image:
    """Decode an image file's bytes as upright 8-bit RGB.

    JPEGs are decoded in draft mode: libjpeg scales the DCT by 1/2, 1/4 or 1/8
    while decoding, as long as both sides stay >= ``min_size``. A 600x600
    CIPLAB file resized to 224 decodes at 300x300, far faster than a full
    decode, and the later resize hides the difference. ``min_size=None``
    decodes at full size. An image of more than ``max_pixels`` pixels is refused
    before it is decoded (Pillow's own decompression-bomb guard stays in force).

    Raises:
        ImageDecodeError: the data is truncated, corrupt, too large or not an image.
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        # Not closed: closing a Pillow image drops its pixels, and an in-memory file needs no closing.
        img = Image.open(io.BytesIO(data))
        if max_pixels and img.width * img.height > max_pixels:
            raise ImageDecodeError(
                f"{img.width} x {img.height} pixels: more than the limit of {max_pixels:,} pixels"
            )
        if img.format == "JPEG" and min_size:
            img.draft("RGB", (min_size, min_size))
        img.load()
        # Copies only where something changes (each copy costs time on every image).
        upright: Image.Image = img
        if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:
            upright = ImageOps.exif_transpose(img)
        if upright.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit greyscale: scale to 8 bits instead of clipping at 255.
            upright = upright.point(lambda v: v / 256).convert("L")
        return upright if upright.mode == "RGB" else upright.convert("RGB")
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(
            "not an image: no format Pillow reads (JPEG, PNG, WebP, BMP, TIFF...)"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageDecodeError(f"{type(err).__name__}: {err}") from err


def load_rgb(path: str | Path, min_size: int | None) -> Image.Image:
    """Read and decode an image file (see ``decode_rgb``)."""
    return decode_rgb(read_file(path), min_size)


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
