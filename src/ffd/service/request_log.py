"""``serve.log_dir``: each upload kept under its sha256 in ``uploads/``, its row in ``predictions.jsonl``.

Written in a thread of its own (the event loop never waits on the disk), each upload to a temporary
file that is synced and then renamed into place (``ffd.files.publish_file``: a reader never sees
part of one), each request's rows as one append that is synced. The folder stops growing at
``serve.log_max_mb``: beyond it nothing more is kept, and one warning says so.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ffd.files import publish_file

log = logging.getLogger(__name__)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


class RequestLog:
    """The upload log in ``folder``, at most ``max_bytes`` large."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder, self.max_bytes = folder, max_bytes
        (folder / "uploads").mkdir(parents=True, exist_ok=True)
        self.used = folder_bytes(folder)
        self.full = False
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="ffd-log")  # one writer: appends in order

    async def write(self, uploads: Sequence[tuple[str, bytes]], rows: Sequence[dict[str, Any]]) -> None:
        """Keep a request's uploads and rows (in the log's thread)."""
        await asyncio.get_running_loop().run_in_executor(self._thread, self._write, uploads, rows)

    def _fits(self, size: int) -> bool:
        if self.used + size <= self.max_bytes:
            return True
        if not self.full:
            self.full = True
            log.warning(
                "serve.log_dir=%s reached serve.log_max_mb=%g: later uploads and rows are not kept (make "
                "room and restart, or raise serve.log_max_mb).", self.folder, self.max_bytes / 2**20
            )  # fmt: skip
        return False

    def _write(self, uploads: Sequence[tuple[str, bytes]], rows: Sequence[dict[str, Any]]) -> None:
        time = datetime.now(UTC).isoformat(timespec="seconds")
        lines = []
        for (_, data), row in zip(uploads, rows, strict=True):
            digest = hashlib.sha256(data).hexdigest()
            kept = {k: v for k, v in row.items() if not k.endswith("_png")}
            entry = {"time": time, "sha256": digest, "kept": self._keep(digest, data), **kept}
            lines.append(json.dumps(entry) + "\n")
        self._append("".join(lines).encode())

    def _keep(self, digest: str, data: bytes) -> bool:
        """Whether the upload is in uploads/ (written now, or before)."""
        path = self.folder / "uploads" / digest
        if path.exists():
            return True
        if not self._fits(len(data)):
            return False
        tmp = path.with_name(f".{digest}.tmp")
        tmp.write_bytes(data)
        publish_file(tmp, path)
        self.used += len(data)
        return True

    def _append(self, text: bytes) -> None:
        if not self._fits(len(text)):
            return
        fd = os.open(self.folder / "predictions.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(text)
            while view:  # one write, unless the kernel takes part of it
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        self.used += len(text)
