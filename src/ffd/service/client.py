"""Driving a service from outside, as its users do: start ``python -m ffd.serve`` in a child process, and
put load on it from concurrent clients (``make bench``, the tests)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np

from ffd.errors import FfdError

logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise

READY = re.compile(r"Serving .* at (http://\S+?)/ ")


def die_with_parent() -> None:
    """In the child (Linux): SIGTERM when the process that started it dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass(frozen=True)
class Running:
    """A service started by ``running_service``: its base URL and its process id."""

    url: str
    pid: int


@contextlib.contextmanager
def running_service(
    ckpt_path: str | Path, *overrides: str, log: Path, env: dict[str, str] | None = None, wait_s: float = 180
) -> Iterator[Running]:
    """``python -m ffd.serve ckpt_path=... serve.port=0 OVERRIDES`` in its own process group, its output
    in ``log``; yields it once /healthz answers. The whole group is killed on the way out, and the
    service ends with this process however it ends."""
    cmd = [sys.executable, "-m", "ffd.serve", f"ckpt_path={ckpt_path}", "serve.port=0", *overrides]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    try:
        yield Running(wait_ready(proc, log, wait_s), proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def memory_mib(pid: int) -> dict[str, float]:
    """A process's resident memory now (``rss``) and at its peak so far (``peak``), in MiB (Linux)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {"rss": int(fields["VmRSS"].split()[0]) / 1024, "peak": int(fields["VmHWM"].split()[0]) / 1024}


def wait_ready(proc: subprocess.Popen, log: Path, wait_s: float) -> str:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FfdError(f"ffd.serve exited with status {proc.returncode}:\n{log.read_text()[-3000:]}")
        if found := READY.search(log.read_text()):
            url = found.group(1)
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    return url
        time.sleep(0.2)
    raise FfdError(f"ffd.serve did not answer within {wait_s:.0f} s; see {log}")


def local_only(url: str) -> None:
    """Refuse to put load on anything but this machine."""
    host = urlparse(url).hostname or ""
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_loopback:
            return
    if host != "localhost":
        raise FfdError(f"{url}: load is only put on this machine's own service (127.0.0.1).")


def predict_request(host: str, name: str, data: bytes, headers: dict[str, str]) -> bytes:
    """The whole HTTP/1.1 request (keep-alive) that posts one file to /v1/predict as multipart/form-data."""
    boundary = f"ffd-{uuid.uuid4().hex}"
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    body = b"".join([
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{quoted}\"\r\n".encode(),
        b"Content-Type: application/octet-stream\r\n\r\n", data, f"\r\n--{boundary}--\r\n".encode(),
    ])  # fmt: skip
    head = {"Host": host, "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(body)), **headers}  # fmt: skip
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
    return f"POST /v1/predict HTTP/1.1\r\n{lines}\r\n".encode() + body


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes, bool]:
    """One request on a kept-alive connection: (status, body, whether the server keeps the connection)."""
    writer.write(request)
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    fields = {
        k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in head[1:] if ":" in line)
    }
    body = await reader.readexactly(int(fields.get("content-length", "0")))
    return status, body, fields.get("connection", "").lower() != "close"


async def _load(
    url: str, images: Sequence[tuple[str, bytes]], clients: int, duration_s: float, headers: dict[str, str]
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter = Counter()
    errors: list[str] = []
    parts = urlparse(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [predict_request(parts.netloc, name, data, headers) for name, data in images]
    stop = time.perf_counter() + duration_s

    async def one_client(first: int) -> None:
        k, connection = first, None
        while time.perf_counter() < stop:
            request = requests[k % len(requests)]
            k += clients
            start = time.perf_counter()
            try:
                connection = connection or await asyncio.open_connection(host, port)
                status, body, kept = await asyncio.wait_for(exchange(*connection, request), 60)
            except (
                OSError,
                EOFError,
                ValueError,
                IndexError,
                TimeoutError,
                asyncio.LimitOverrunError,
            ) as err:
                statuses["no answer"] += 1  # the connection is lost, or the answer is not HTTP
                errors.append(f"{type(err).__name__}: {err}")
                kept = False
            else:
                latencies.append(time.perf_counter() - start)
                statuses[status] += 1
                if status != 200:
                    errors.append(f"HTTP {status}: {body[:200].decode(errors='replace')}")
            if not kept and connection is not None:
                connection[1].close()
                connection = None
        if connection is not None:
            connection[1].close()

    start = time.perf_counter()
    await asyncio.gather(*(one_client(i) for i in range(clients)))
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": sum(statuses.values()),
        "errors": len(errors),
        "first_errors": errors[:5],
        "statuses": dict(statuses),
        "img_per_s": round(statuses[200] / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
    }


def put_load(
    url: str, images: Sequence[tuple[str, bytes]], clients: int, duration_s: float, token: str | None = None
) -> dict[str, Any]:
    """``clients`` concurrent clients, each posting one image per request, back to back, for
    ``duration_s``: requests, errors, img/s and p50/p99 latency."""
    local_only(url)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return asyncio.run(_load(url, images, clients, duration_s, headers))
