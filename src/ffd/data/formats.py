"""The file formats ffd reads, by allow-list: any other file is refused with its format's name.

One list for each kind of input: the decoders open only these formats (Pillow's ``formats=``, FFmpeg's
``format_whitelist``), and the folder scans look only for these suffixes.
"""

from __future__ import annotations

# Pillow's format name -> the suffixes of its files. A GIF is read as its first frame; an MPO (a JPEG
# with extra frames, as some cameras write) opens as a JPEG and is read as its first image.
IMAGE_FORMATS: dict[str, tuple[str, ...]] = {
    "JPEG": (".jpg", ".jpeg"),
    "PNG": (".png",),
    "WEBP": (".webp",),
    "BMP": (".bmp",),
    "TIFF": (".tif", ".tiff"),
    "GIF": (".gif",),
}
IMAGE_SUFFIXES = frozenset(s for suffixes in IMAGE_FORMATS.values() for s in suffixes)

# FFmpeg's demuxer (its name as PyAV reports ``container.format.name``) -> the suffixes of its files.
VIDEO_CONTAINERS: dict[str, tuple[str, ...]] = {
    "mov,mp4,m4a,3gp,3g2,mj2": (".mp4", ".m4v", ".mov"),
    "matroska,webm": (".mkv", ".webm"),
    "avi": (".avi",),
    "mpeg": (".mpg", ".mpeg"),
}
VIDEO_SUFFIXES = frozenset(s for suffixes in VIDEO_CONTAINERS.values() for s in suffixes)
# FFmpeg's format_whitelist: the demuxers that may open a video (one name each is enough).
VIDEO_DEMUXERS = "mov,mp4,matroska,webm,avi,mpeg"
