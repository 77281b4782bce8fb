"""Uploaded files, read from a multipart request body in memory, within the service's limits.

Starlette's form parser spills file parts over 1 MB into temporary files; here
the whole body is capped at ``serve.max_upload_mb`` while it streams in, and the
parts stay in memory, so nothing uploaded touches the disk. The whole body must
arrive within ``serve.body_timeout_s``: a client sending it slowly (slowloris) gets
HTTP 408 and its connection is closed. Client file names are only echoed back
(their last component, control characters removed), never used as paths.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator
from pathlib import PurePosixPath

from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

HINT = "send the images as multipart/form-data file fields, e.g. curl -F file=@face.jpg"


class InMemoryParser(MultiPartParser):
    spool_max_size = 2**62  # parts never roll over to disk: the body is capped before it gets here


def display_name(filename: str | None, index: int) -> str:
    """The client's file name as shown in the results: last component, printable, at most 200 characters."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name
    name = re.sub(r"[\x00-\x1f\x7f]", "", name)[:200]
    return name or f"upload-{index + 1}"


async def capped(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise HTTPException(413, too_large(limit))
        yield chunk


def too_large(limit: int) -> str:
    return (
        f"the request is larger than serve.max_upload_mb={limit / 2**20:g} MB: send fewer or smaller "
        "images per request"
    )


async def read_uploads(
    request: Request, limit: int, max_files: int, timeout_s: float
) -> list[tuple[str, bytes]]:
    """(display name, bytes) of each file part, in order; HTTP 4xx with a message for a bad request,
    408 for a body not in within ``timeout_s``."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(415, f"not a multipart/form-data request: {HINT}")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise HTTPException(413, too_large(limit))
    try:
        async with asyncio.timeout(timeout_s):
            return await _parse(request, limit, max_files)
    except TimeoutError:
        raise HTTPException(
            408, f"the request body did not arrive within serve.body_timeout_s={timeout_s:g} s: send it "
            "faster, or send less per request", headers={"Connection": "close"},
        ) from None  # fmt: skip


async def _parse(request: Request, limit: int, max_files: int) -> list[tuple[str, bytes]]:
    parser = InMemoryParser(request.headers, capped(request, limit), max_files=max_files, max_fields=100)
    try:
        form = await parser.parse()
    except MultiPartException as err:
        if "Too many files" in err.message:
            raise HTTPException(413, f"{err.message} (serve.max_files): send fewer per request") from None
        raise HTTPException(400, f"malformed multipart body ({err.message}): {HINT}") from None
    try:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise HTTPException(400, f"the request has no file: {HINT}")
        return [(display_name(f.filename, i), await f.read()) for i, f in enumerate(files)]
    finally:
        await form.close()
