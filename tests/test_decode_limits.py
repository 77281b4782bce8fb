"""Decoding hostile input (ffd.data.io.decode_rgb): every file either decodes to RGB no larger than the
model needs, or is refused with an ImageDecodeError that says why; never another exception, and never
more memory than the limits allow. predict_onnx.py's decode() gives the same pixels."""

from __future__ import annotations

import base64
import dataclasses
import functools
import io
import json
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import LIMITS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import EpsImagePlugin, Image, ImageFile, ImageOps

from ffd.data import io as ffd_io
from ffd.data.decoding import Decoder
from ffd.data.faces import AUTO_ORDER, Face, FaceCropper, _shrunk, make_detector
from ffd.data.formats import IMAGE_FORMATS
from ffd.data.io import ImageDecodeError, decode_rgb
from ffd.deploy import predict_onnx
from ffd.errors import FfdError

# Pillow warns about what hostile files hold (corrupt EXIF, sizes past its own bomb warning): expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::PIL.Image.DecompressionBombWarning")

SIZE = 64  # the model's input side in these tests
ACCEPTED = {*IMAGE_FORMATS, "MPO"}
READS = "ffd reads JPEG, PNG, WebP, BMP, TIFF and GIF (the first frame)"
NOT_AN_IMAGE = "not an image: no format ffd reads (JPEG, PNG, WebP, BMP, TIFF, GIF)"
FUZZ = settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def refused(data: bytes, min_size: int | None = SIZE, limits=LIMITS) -> str:
    with pytest.raises(ImageDecodeError) as err:
        decode_rgb(data, min_size, limits)
    return str(err.value)


def decoded_or_refused(data: bytes, min_size: int | None = SIZE, limits=LIMITS) -> Image.Image | None:
    """decode_rgb's image, checked against the model-size rule; None where it was refused (with a reason).
    Any exception but ImageDecodeError fails the test."""
    try:
        img = decode_rgb(data, min_size, limits)
    except ImageDecodeError as err:
        assert str(err).strip()
        return None
    assert img.mode == "RGB" and img.width > 0 and img.height > 0
    declared = Image.open(io.BytesIO(data))  # it decoded, so it opens
    short, long = sorted(img.size)
    assert declared.width * declared.height <= limits.max_pixels
    if min_size is None or min(declared.size) < 2 * min_size:  # decoded as it is
        assert [short, long] == sorted(declared.size)
        return img
    assert short >= min_size
    if declared.format in ("JPEG", "MPO"):  # libjpeg's DCT scaling goes down to 1/8 at most
        assert short < 2 * min_size or short <= -(-min(declared.size) // 8)
    else:
        assert short < 2 * min_size
    return img


def as_bytes(img: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img.save(out, fmt, **params)
    return out.getvalue()


def png(width: int, height: int, color_type: int = 2, depth: int = 8, idat: bytes | None = None) -> bytes:
    """A PNG declaring ``width`` x ``height`` whatever its data (default: a few bytes of it)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    palette = chunk(b"PLTE", bytes(range(48))) if color_type == 3 else b""
    data = zlib.compress(b"\0" * 64) if idat is None else idat
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + palette + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def constant_png(side: int, color_type: int, channels: int) -> bytes:
    """A side x side PNG of one colour, 8 bits a channel: its rows filtered so they deflate to nothing."""
    deflate = zlib.compressobj(1)
    first = b"\x01" + bytes(range(100, 100 + channels)) + b"\0" * (channels * (side - 1))  # Sub filter
    rest = b"\x02" + b"\0" * (channels * side)  # Up filter: the row above
    idat = (
        deflate.compress(first) + b"".join(deflate.compress(rest) for _ in range(side - 1)) + deflate.flush()
    )
    return png(side, side, color_type, 8, idat)


# An 8000 x 8000 lossless WebP of one colour (2,506 bytes; Pillow takes seconds to write it).
WEBP_8000 = zlib.decompress(
    base64.b64decode(
        "eNoL8nRzO8TJwBDu6hQQFmDhsxXI1re/f56dPaBL68ri/47CQio/6nfbKgXlc3pM+vdfXfnXfIfGH7/7lZQe2///+X7//3+/wcT5"
        "+n+f79f///sdTMz//+c7nPccXeFvOO8zisJRYpQYJUaJUWKUGCVGiVECD/HzPIL3356ZAQAnElZj"
    )
)


@functools.cache
def corpus() -> tuple[tuple[str, bytes], ...]:
    """Every image file Pillow writes here: each format in every mode it takes, small (40 x 60) and
    large enough to be reduced (150 x 200), and animations, an MPO, EXIF orientations and deep TIFFs."""
    Image.init()  # every plugin, so every writer
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8))
    grey16 = rng.integers(0, 65536, (150, 200)).astype(np.uint16)
    modes = {m: photo.convert(m) for m in ("RGB", "L", "1", "P", "RGBA", "LA", "I", "F", "CMYK", "YCbCr")}
    modes["I;16"] = Image.fromarray(grey16)
    files = []
    for fmt in sorted(Image.SAVE):
        if fmt in ("BUFR", "GRIB", "HDF5", "WMF", "PALM", "AVIF", "BLP"):  # no writer here, or a slow one
            continue
        for mode, img in modes.items():
            for size in [(60, 40), (200, 150)] if fmt in ACCEPTED else [(60, 40)]:
                try:
                    files.append((f"{fmt} {mode} {size}", as_bytes(img.resize(size), fmt)))
                except Exception:
                    continue
    frames = [photo.rotate(a) for a in (0, 90, 180)]
    for fmt in ("GIF", "WEBP", "TIFF", "MPO", "PNG"):
        files.append((f"{fmt} animated", as_bytes(frames[0], fmt, save_all=True, append_images=frames[1:])))
    files.append(("TIFF I;16B", as_bytes(Image.fromarray(grey16.astype(">u2")), "TIFF")))
    files.append(("TIFF LAB", as_bytes(photo.convert("LAB"), "TIFF")))
    files.append(("WEBP lossless RGBA", as_bytes(modes["RGBA"], "WEBP", lossless=True)))
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        for fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
            files.append((f"{fmt} orientation {orientation}", as_bytes(photo, fmt, exif=exif)))
    return tuple(files)


def test_every_file_pillow_writes_decodes_as_predict_onnx_or_is_refused_by_format(tmp_path: Path) -> None:
    names = set()
    for name, data in corpus():
        try:
            fmt = Image.open(io.BytesIO(data)).format
        except Exception:  # Pillow writes it, but does not read it (PDF)
            fmt = name.split()[0]
        for min_size in (SIZE, None):
            img = decoded_or_refused(data, min_size)
            if fmt not in ACCEPTED:
                assert img is None, name
                message = refused(data, min_size)
                assert message in (f"format {fmt} is not accepted: {READS}", NOT_AN_IMAGE), (name, message)
                continue
            assert img is not None, (name, refused(data, min_size))
            if min_size is not None:
                (tmp_path / "file").write_bytes(data)
                assert np.array_equal(
                    predict_onnx.decode(str(tmp_path / "file"), min_size), np.asarray(img)
                ), name
        names.add(fmt)
    assert names >= ACCEPTED | {"EPS", "ICO", "PPM", "TGA", "PCX", "SGI", "JPEG2000"}


@FUZZ
@given(data=st.binary(max_size=3000))
def test_random_bytes(data: bytes) -> None:
    assert decoded_or_refused(data) is None


MAGIC = [
    b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", b"GIF89a", b"BM", b"II*\0", b"MM\0*",
    b"RIFF\0\0\0\0WEBPVP8 ", b"RIFF\0\0\0\0WEBPVP8L", b"RIFF\0\0\0\0WEBPVP8X",
    b"%!PS-Adobe-3.0 EPSF-3.0\n", b"P6\n", b"\0\0\1\0", b"%PDF-1.4\n",
]  # fmt: skip


@FUZZ
@given(magic=st.sampled_from(MAGIC), rest=st.binary(max_size=2000))
def test_random_bytes_after_a_formats_magic(magic: bytes, rest: bytes) -> None:
    decoded_or_refused(magic + rest)


@FUZZ
@given(file=st.sampled_from(range(10**6)), cut=st.floats(0, 1), min_size=st.sampled_from([SIZE, None]))
def test_truncated_files(file: int, cut: float, min_size: int | None) -> None:
    _, data = corpus()[file % len(corpus())]
    decoded_or_refused(data[: int(len(data) * cut)], min_size)


@FUZZ
@given(
    file=st.sampled_from(range(10**6)),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=8),
)
def test_corrupted_files(file: int, flips: list[tuple[float, int]]) -> None:
    data = bytearray(corpus()[file % len(corpus())][1])
    for at, value in flips:
        data[int(at * (len(data) - 1))] = value
    decoded_or_refused(bytes(data))


@FUZZ
@given(fmt=st.sampled_from(["JPEG", "PNG", "WEBP"]), payload=st.binary(max_size=200), tiff=st.booleans())
def test_random_exif_bytes(fmt: str, payload: bytes, tiff: bool) -> None:
    exif = b"Exif\0\0" + (b"II*\0\x08\0\0\0" if tiff else b"") + payload
    data = as_bytes(Image.new("RGB", (48, 32), (10, 20, 30)), fmt, exif=exif)
    img = decoded_or_refused(data, None)
    assert img is not None and sorted(img.size) == [32, 48]  # corrupt EXIF: orientation 1 at worst


@FUZZ
@given(value=st.one_of(st.integers(0, 2**16 - 1), st.text(max_size=4), st.floats(allow_nan=True)))
def test_any_orientation_value(value) -> None:
    exif = Image.Exif()
    exif[0x0112] = value
    try:
        data = as_bytes(Image.new("RGB", (48, 32)), "JPEG", exif=exif)
    except Exception:
        return  # Pillow cannot write it
    img = decoded_or_refused(data, None)
    turned = type(value) is int and 5 <= value <= 8
    assert img is not None and img.size == ((32, 48) if turned else (48, 32))


@FUZZ
@given(
    width=st.integers(1, 3000),
    height=st.integers(1, 60),
    fmt=st.sampled_from(["PNG", "BMP", "TIFF", "GIF", "WEBP"]),
    tall=st.booleans(),
)
def test_thin_images(width: int, height: int, fmt: str, tall: bool) -> None:
    size = (height, width) if tall else (width, height)
    img = decoded_or_refused(as_bytes(Image.new("L", size, 128), fmt))
    if img is None:
        message = refused(as_bytes(Image.new("L", size, 128), fmt))
        assert "(limits.min_side)" in message or "(limits.max_aspect)" in message, message


@FUZZ
@given(
    width=st.integers(1, 2**31 - 1),
    height=st.integers(1, 2**31 - 1),
    kind=st.sampled_from([(0, 1), (0, 8), (0, 16), (2, 8), (2, 16), (3, 8), (4, 8), (6, 8), (6, 16)]),
)
def test_crafted_png_headers(width: int, height: int, kind: tuple[int, int]) -> None:
    decoded_or_refused(png(width, height, *kind))


@FUZZ
@given(
    width=st.integers(0, 2**32 - 1),
    height=st.integers(0, 2**32 - 1),
    fmt=st.sampled_from(["GIF", "BMP", "TIFF", "WEBP"]),
)
def test_crafted_headers_of_other_formats(width: int, height: int, fmt: str) -> None:
    w16, h16, w14, h14 = width % 2**16, height % 2**16, width % 2**14, height % 2**14
    if fmt == "GIF":
        data = (
            b"GIF89a"
            + struct.pack("<HHBBB", w16, h16, 0, 0, 0)
            + b",\0\0\0\0"
            + struct.pack("<HH", w16, h16)
            + b"\0\2\2D\1\0;"
        )
    elif fmt == "BMP":
        info = struct.pack("<IiiHHIIiiII", 40, width % 2**31, height % 2**31 - 2**30, 1, 24, 0, 0, 0, 0, 0, 0)
        data = b"BM" + struct.pack("<IHHI", 14 + 40 + 12, 0, 0, 54) + info + b"\0" * 12
    elif fmt == "TIFF":
        tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8),
                (277, 3, 1), (278, 4, height), (279, 4, 16)]  # fmt: skip
        ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in tags)
        data = b"II*\0" + struct.pack("<I", 24) + b"\0" * 16 + ifd + b"\0\0\0\0"
    else:
        bits = w14 | (h14 << 14)
        body = b"VP8L" + struct.pack("<I", 5 + 16) + b"\x2f" + struct.pack("<I", bits) + b"\0" * 16
        data = b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body
    decoded_or_refused(data)


# The explicit rules.


def test_other_formats_are_refused_by_name_and_never_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a))  # EPS's load runs it
    eps = as_bytes(Image.new("RGB", (40, 30)), "EPS")
    assert refused(eps) == f"format EPS is not accepted: {READS}"
    for fmt in ("ICO", "PPM", "TGA", "PCX", "SGI", "JPEG2000", "DDS", "IM", "QOI"):
        assert refused(as_bytes(Image.new("RGB", (40, 30)), fmt)) == f"format {fmt} is not accepted: {READS}"
    assert refused(as_bytes(Image.new("RGB", (40, 30)), "PDF")) == NOT_AN_IMAGE  # Pillow reads no PDF
    assert refused(b"hello") == NOT_AN_IMAGE and refused(b"") == "empty file (0 bytes)"
    item = Decoder(SIZE, LIMITS).decode(Path("x.eps"), eps)
    assert item.status == "unreadable" and item.message == f"format EPS is not accepted: {READS}"
    assert not calls


def test_mpo_and_animations_decode_as_their_first_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import GifImagePlugin, MpoImagePlugin, TiffImagePlugin, WebPImagePlugin

    seeks = []
    for plugin in (GifImagePlugin.GifImageFile, MpoImagePlugin.MpoImageFile, TiffImagePlugin.TiffImageFile,
                   WebPImagePlugin.WebPImageFile):  # fmt: skip
        seek = plugin.seek
        monkeypatch.setattr(
            plugin, "seek", lambda self, frame, seek=seek: (frame and seeks.append(frame), seek(self, frame))
        )
    rng = np.random.default_rng(1)
    first, *rest = [Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)) for _ in range(3)]
    for fmt in ("GIF", "WEBP", "TIFF", "MPO"):
        data = as_bytes(
            first, fmt, save_all=True, append_images=rest, **({"lossless": True} if fmt == "WEBP" else {})
        )
        assert fmt == "MPO" or Image.open(io.BytesIO(data)).n_frames == 3
        seeks.clear()
        img = decode_rgb(data, None, LIMITS)
        assert not seeks, fmt
        expected = first if fmt != "GIF" else Image.open(io.BytesIO(data)).convert("RGB")
        if (
            fmt == "MPO"
        ):  # its first image is the JPEG of the first frame, decoded in draft mode at a model size
            jpeg = as_bytes(first, "JPEG")
            assert np.array_equal(np.asarray(img), np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")))
            assert np.array_equal(
                np.asarray(decode_rgb(data, 100, LIMITS)), np.asarray(decode_rgb(jpeg, 100, LIMITS))
            )
            assert decode_rgb(data, 100, LIMITS).size == (200, 150)
        else:
            assert np.array_equal(np.asarray(img), np.asarray(expected)), fmt


def test_limits_are_checked_before_decoding_and_name_their_setting() -> None:
    assert refused(constant_png(6400, 0, 1)) == (
        "6400 x 6400 pixels: more than the limit of 40,000,000 pixels (limits.max_pixels)"
    )
    small = dataclasses.replace(LIMITS, max_pixels=10_000)
    assert refused(as_bytes(Image.new("RGB", (200, 51)), "PNG"), limits=small) == (
        "200 x 51 pixels: more than the limit of 10,000 pixels (limits.max_pixels)"
    )
    assert refused(png(7000, 6000)).endswith("(limits.max_pixels)")  # a few bytes: refused, not "truncated"
    assert refused(as_bytes(Image.new("RGB", (5, 100)), "PNG")) == (
        "5 x 100 pixels: the shorter side is under the limit of 8 pixels (limits.min_side)"
    )
    assert refused(as_bytes(Image.new("RGB", (400, 10)), "BMP")) == (
        "400 x 10 pixels: the longer side is 40 times the shorter, more than the limit of 20 "
        "(limits.max_aspect)"
    )
    assert decode_rgb(as_bytes(Image.new("RGB", (200, 10)), "PNG"), SIZE, LIMITS).size == (200, 10)  # 20: ok
    assert "DecompressionBomb" in refused(png(100_000, 100_000))  # Pillow's own guard, at open


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L", "LA", "1", "I;16", "I", "F", "CMYK"])
def test_large_images_decode_reduced_as_predict_onnx_does(mode: str, tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(2)
    photo = Image.fromarray(rng.integers(0, 256, (900, 1100, 3), dtype=np.uint8))
    img = {"I;16": Image.fromarray(rng.integers(0, 65536, (900, 1100)).astype(np.uint16)),
           "I": Image.fromarray(rng.integers(-3000, 70000, (900, 1100)).astype(np.int32)),
           "F": Image.fromarray(rng.random((900, 1100)).astype(np.float32)),
           "LA": photo.convert("RGBA").convert("LA")}.get(mode) or photo.convert(mode)  # fmt: skip
    path = tmp_path / "big.tif"
    img.save(path, "TIFF" if mode in ("I", "F", "CMYK") else "PNG")
    data = path.read_bytes()
    got = decode_rgb(data, 224, LIMITS)
    assert got.size == (275, 225) and 224 <= min(got.size) < 448  # k = 900 // 224 = 4: ceil(1100 / 4)
    assert np.array_equal(np.asarray(got), predict_onnx.decode(str(path), 224))
    # Converted a band of rows at a time: the same pixels as the whole image at once.
    for module in (ffd_io, predict_onnx):
        monkeypatch.setattr(module, "BAND_PIXELS", 5000)
    assert np.array_equal(np.asarray(decode_rgb(data, 224, LIMITS)), np.asarray(got))
    assert np.array_equal(predict_onnx.decode(str(path), 224), np.asarray(got))
    if mode in ("RGB", "RGBA", "P", "L", "1"):  # alpha dropped, then the mean of each 4 x 4 box
        expected = Image.open(path).convert("RGB").reduce(4)
        assert np.array_equal(np.asarray(got), np.asarray(expected))


def test_deep_and_float_greyscale_are_scaled_to_8_bits() -> None:
    values = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    for img in (Image.fromarray(values), Image.fromarray(values.astype(">u2"))):
        got = np.asarray(decode_rgb(as_bytes(img, "TIFF"), None, LIMITS))[..., 0]
        assert np.array_equal(got, values // 256), img.mode  # scaled, not clipped
    ints = Image.fromarray((values.astype(np.int32) - 5000) * 1000)
    floats = Image.fromarray(values.astype(np.float32) / 65535 - 0.5)
    for img in (ints, floats):  # min-max: the lowest value black, the highest white
        got = np.asarray(decode_rgb(as_bytes(img, "TIFF"), None, LIMITS))
        assert got.min() == 0 and got.max() >= 254 and np.all(np.diff(got[..., 0].ravel().astype(int)) >= 0)
    constant = np.asarray(decode_rgb(as_bytes(Image.new("F", (40, 30), 7.5), "TIFF"), None, LIMITS))
    assert not constant.any()
    nan = np.full((30, 40), np.nan, dtype=np.float32)
    assert "not finite" in refused(as_bytes(Image.fromarray(nan), "TIFF"))


def test_orientation_as_exif_transpose_and_corrupt_exif_is_upright() -> None:
    photo = Image.fromarray(np.random.default_rng(3).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        data = as_bytes(photo, "PNG", exif=exif)
        expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
        assert np.array_equal(np.asarray(decode_rgb(data, None, LIMITS)), np.asarray(expected)), orientation
    broken = as_bytes(photo, "JPEG", exif=b"Exif\0\0MM\0*\0\0\0\x08\xff\xff\x01\x12")
    assert decode_rgb(broken, None, LIMITS).size == (50, 30)


@pytest.mark.parametrize(
    "error",
    [
        OSError("x"),
        SyntaxError("x"),
        ValueError("x"),
        Image.DecompressionBombError("x"),
        struct.error("x"),
        EOFError(),
        TypeError("x"),
        KeyError("x"),
        IndexError("x"),
        ZeroDivisionError("x"),
        MemoryError(),
        RuntimeError("x"),
        RecursionError("x"),
    ],  # fmt: skip
)
def test_any_error_while_decoding_is_an_image_decode_error(error: Exception, monkeypatch) -> None:
    def fail(self):
        raise error

    monkeypatch.setattr(ImageFile.ImageFile, "load", fail)
    message = refused(as_bytes(Image.new("RGB", (40, 30)), "BMP"))
    assert message.startswith(type(error).__name__) and message.strip()


def test_faces_never_shrink_a_side_to_0_and_crop_what_the_limits_allow() -> None:
    small, scale = _shrunk(Image.new("RGB", (5000, 1)), 640, "L")
    assert small.size == (640, 1) and scale == 640 / 5000
    detectors = []
    for name in AUTO_ORDER:
        try:
            detectors.append(make_detector(name))
        except FfdError:
            continue
    assert detectors  # haar at least (OpenCV is a test dependency)
    for detector in detectors:
        decode = Decoder(SIZE, LIMITS, FaceCropper(0.25, detector))
        for size in [(8, 8), (8, 160), (160, 8), (19, 300), (700, 2000)]:
            data = as_bytes(Image.new("RGB", size, (120, 110, 100)), "PNG")
            item = decode.decode(Path("x.png"), data)
            assert item.status == "no_face", (detector.name, size, item.message)
        item = decode.decode(Path("thin.png"), as_bytes(Image.new("RGB", (5000, 1)), "PNG"))
        assert item.status == "unreadable" and "(limits.min_side)" in item.message

    class Outside:  # a face box outside the image: no crop, rather than an empty one
        name = "outside"

        def detect(self, img: Image.Image) -> list[Face]:
            return [Face((500.0, 500.0, 510.0, 510.0), 1.0)]

    item = Decoder(SIZE, LIMITS, FaceCropper(0.0, Outside())).decode(
        Path("x.png"), as_bytes(Image.new("RGB", (40, 30)), "PNG")
    )
    assert item.status == "no_face"


PEAK = """
import json, sys, time
from ffd.data.io import ImageDecodeError, decode_rgb
from ffd.data.settings import Limits

def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])

limits = Limits(**json.loads(sys.argv[1]))
out = {}
for path in sys.argv[2:]:
    data = open(path, "rb").read()
    open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM to VmRSS
    base, start = kib("VmRSS:"), time.perf_counter()
    try:
        result = list(decode_rgb(data, 224, limits).size)
    except ImageDecodeError as err:
        result = str(err)
    out[path] = [(kib("VmHWM:") - base) / 1024, time.perf_counter() - start, result]
print(json.dumps(out))
"""


@pytest.mark.skipif(
    not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's /proc/self/clear_refs"
)
def test_peak_memory_of_decompression_bombs_stays_bounded(tmp_path: Path) -> None:
    """A 6300 x 6300 PNG of one colour (39.7 M pixels, within limits.max_pixels) costs its decoded image and
    nothing more (measured: 40 MiB greyscale, 160 MiB RGBA: 4 bytes a pixel), and an 8000 x 8000 WebP
    of 2.5 kB is refused before it is decoded (measured: 4 MiB)."""
    files = {"L.png": constant_png(6300, 0, 1), "RGBA.png": constant_png(6300, 6, 4), "8000.webp": WEBP_8000}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    limits = json.dumps({f.name: getattr(LIMITS, f.name) for f in dataclasses.fields(LIMITS)})
    cmd = [sys.executable, "-c", PEAK, limits, *(str(tmp_path / n) for n in files)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    peak = {Path(p).name: v for p, v in json.loads(result.stdout).items()}
    print(peak)
    assert peak["L.png"][2] == [225, 225] and peak["L.png"][0] < 64  # MiB above the process's baseline
    assert peak["RGBA.png"][2] == [225, 225] and peak["RGBA.png"][0] < 200
    assert "(limits.max_pixels)" in peak["8000.webp"][2] and peak["8000.webp"][0] < 32
