"""Hostile HTTP input, all at once, against a real ``ffd serve`` on 127.0.0.1: 16-file requests of
40 M-pixel PNGs, images of absurd shapes, a format ffd never opens, a ten-minute 1080p video, bodies
that trickle in, garbage multipart, a foreign Host and a cross-site form. Each gets its documented
answer (no 5xx but the 503/429 overload answers), the server's memory stays within its budget, and it
answers a normal request afterwards. The figures it prints are the ones docs/serve.md quotes."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from ffd.service.client import Running, memory_mib, running_service

pytestmark = pytest.mark.slow

BODY_TIMEOUT_S = 3  # serve.body_timeout_s here, so the slow bodies are answered soon
MAX_QUEUE = 64  # serve.max_queue here: 3 16-file requests and a video (32 frames) do not fit together
RSS_BUDGET_MIB = 1024  # the server's peak resident memory under attack, above what it held before
OVERLOAD = {429, 503}  # the only answers allowed to say "not now"


def png(size: tuple[int, int], mode: str = "L") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, 128).save(out, "PNG")
    return out.getvalue()


def long_video(seconds: int = 590, step: int = 10) -> bytes:
    """A black 1080p H.264 MP4 of ``seconds`` (a frame every ``step`` s): within limits.max_video_*,
    a few kB."""
    import av

    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=1)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1)
        stream.options = {"preset": "ultrafast", "g": "600"}
        black = np.zeros((1080, 1920, 3), np.uint8)
        for i in range(seconds // step):
            frame = av.VideoFrame.from_ndarray(black, format="rgb24")
            frame.pts, frame.time_base = i * step, Fraction(1, 1)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nnewpath 0 0 moveto 100 100 lineto stroke\n%%EOF\n"
)


def hostile_inputs() -> dict[str, bytes]:
    return {"grey": png((6300, 6300)), "wide": png((5000, 1)), "tall": png((1, 5000)), "eps": EPS,
            "video": long_video(), "face": png((300, 300), "RGB")}  # fmt: skip


async def slow_body(url: str, give_up_s: float) -> int | None:
    """A multipart POST whose body comes a byte every 0.5 s: the status the server answers (None: none
    before ``give_up_s``)."""
    parts = httpx.Request("POST", url, files={"file": ("slow.png", png((64, 64), "RGB"))})
    body = parts.read()
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: "
            f"{parts.headers['content-type']}\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
    writer.write(head.encode() + body[:10])
    sent, stop = 10, time.perf_counter() + give_up_s
    try:
        while time.perf_counter() < stop:
            try:
                line = await asyncio.wait_for(reader.readline(), 0.5)
                return int(line.split()[1]) if line else None
            except TimeoutError:
                if sent < len(body) - 1:
                    writer.write(body[sent : sent + 1])
                    sent += 1
                    await writer.drain()
        return None
    except ConnectionError:
        return None
    finally:
        writer.close()


Attack = Callable[[httpx.AsyncClient], Awaitable[dict[str, Any]]]  # a client -> {status, retry_after}


def post(path: str, **kwargs: Any) -> Attack:
    async def send(client: httpx.AsyncClient) -> dict[str, Any]:
        answer = await client.post(path, **kwargs)
        return {"status": answer.status_code, "retry_after": answer.headers.get("retry-after")}

    return send


def attacks(url: str, inputs: dict[str, bytes], give_up_s: float) -> dict[str, Attack]:
    """Each attack by name."""
    grey16 = [("file", (f"grey{i}.png", inputs["grey"])) for i in range(16)]
    face, wide = {"file": ("f.png", inputs["face"])}, {"file": ("w.png", inputs["wide"])}
    boundary = {"content-type": "multipart/form-data; boundary=xyz"}
    no_boundary = {"content-type": "multipart/form-data"}
    garbage = np.random.default_rng(0).bytes(200_000)
    cut = b"--xyz\r\nContent-Disposition: form-data; name="

    async def slow(_: httpx.AsyncClient) -> dict[str, Any]:
        return {"status": await slow_body(url, give_up_s)}

    return {
        **{f"16 x 6300x6300 grey PNG #{i}": post("/v1/predict", files=grey16) for i in (1, 2, 3)},
        "4 x 6300x6300 grey PNG, face_crop": post("/v1/predict?face_crop=true", files=grey16[:4]),
        "5000x1 PNG, face_crop": post("/v1/predict?face_crop=true", files=wide),
        "1x5000 PNG": post("/v1/predict", files={"file": ("t.png", inputs["tall"])}),
        "EPS": post("/v1/predict", files={"file": ("x.eps", inputs["eps"])}),
        "590 s 1080p video": post("/v1/predict_video", files={"file": ("long.mp4", inputs["video"])}),
        "slow body #1": slow,
        "slow body #2": slow,
        "garbage multipart": post("/v1/predict", content=garbage, headers=boundary),
        "multipart without boundary": post("/v1/predict", content=b"--x", headers=no_boundary),
        "cut multipart": post("/v1/predict", content=cut, headers=boundary),
        "foreign Host": post("/v1/predict", files=face, headers={"host": "evil.example"}),
        "cross-site form": post("/v1/predict", files=face, headers={"origin": "http://evil.example"}),
    }  # fmt: skip


# What each attack must get (the statuses allowed besides OVERLOAD, for the admitted big requests).
EXPECTED = {
    "16 x 6300x6300 grey PNG": {200} | OVERLOAD,
    "4 x 6300x6300 grey PNG, face_crop": {422} | OVERLOAD,  # no face in grey
    "5000x1 PNG, face_crop": {422},
    "1x5000 PNG": {422},
    "EPS": {422},
    "590 s 1080p video": {200, 422} | OVERLOAD,
    "slow body": {408},
    "garbage multipart": {400},
    "multipart without boundary": {400},
    "cut multipart": {400},
    "foreign Host": {400},
    "cross-site form": {403},
}


def expected(name: str) -> set[int]:
    return next(codes for prefix, codes in EXPECTED.items() if name.startswith(prefix))


class PeakRss:
    """The highest resident memory of a process, sampled every 20 ms while the block runs (MiB)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._done = pid, 0.0, threading.Event()

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, memory_mib(self.pid)["rss"])

    def __enter__(self) -> PeakRss:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()


async def run_attacks(url: str, inputs: dict[str, bytes], give_up_s: float) -> dict[str, dict[str, Any]]:
    """Every attack at once: each one's status (None: no answer) and seconds."""
    results: dict[str, dict[str, Any]] = {}
    async with httpx.AsyncClient(base_url=url, timeout=give_up_s) as client:

        async def timed(name: str, attack: Attack) -> None:
            start = time.perf_counter()
            try:
                got = await attack(client)
            except httpx.HTTPError as err:
                got = {"status": None, "error": f"{type(err).__name__}: {err}"}
            results[name] = {**got, "seconds": round(time.perf_counter() - start, 2)}

        await asyncio.gather(*(timed(n, a) for n, a in attacks(url, inputs, give_up_s).items()))
    return results


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    ckpt, _ = trained
    root = tmp_path_factory.mktemp("abuse")
    overrides = [f"hydra.run.dir={root / 'run'}", f"serve.body_timeout_s={BODY_TIMEOUT_S}",
                 f"serve.max_queue={MAX_QUEUE}"]  # fmt: skip
    with running_service(ckpt, *overrides, log=root / "serve.log") as running:
        yield running


def test_hostile_requests_at_once(server: Running, tmp_path: Path) -> None:
    url, timeout_s = server.url, 30  # serve.timeout_s (conf/serve.yaml)
    inputs = hostile_inputs()
    face = {"file": ("face.png", inputs["face"])}
    assert httpx.post(f"{url}/v1/predict", files=face, timeout=60).status_code == 200  # warm
    before = memory_mib(server.pid)
    with PeakRss(server.pid) as rss:
        start = time.perf_counter()
        results = asyncio.run(run_attacks(url, inputs, give_up_s=3 * timeout_s))
        wall = time.perf_counter() - start
    start = time.perf_counter()
    after = httpx.post(f"{url}/v1/predict", files=face, timeout=timeout_s)
    normal_s = time.perf_counter() - start
    summary = {"attacks": results, "wall_s": round(wall, 1), "rss_before_mib": round(before["rss"]),
               "peak_rss_mib": round(rss.peak), "vmhwm_mib": round(memory_mib(server.pid)["peak"]),
               "normal_request_after_s": round(normal_s, 2)}  # fmt: skip
    print(json.dumps(summary, indent=1))
    (tmp_path / "abuse.json").write_text(json.dumps(summary, indent=1))

    wrong = {n: r for n, r in results.items() if r["status"] not in expected(n)}
    assert not wrong, wrong
    assert all(r["retry_after"] for r in results.values() if r["status"] == 429)
    assert all(r["seconds"] < BODY_TIMEOUT_S + 5 for n, r in results.items() if n.startswith("slow body"))
    assert rss.peak - before["rss"] < RSS_BUDGET_MIB, summary
    assert after.status_code == 200 and normal_s < timeout_s
    health = httpx.get(f"{url}/healthz")
    assert health.status_code == 200 and health.json()["admitted"] == 0  # every place given back


def test_connections_beyond_the_limit_get_a_503(server: Running) -> None:
    """serve.max_connections (32): idle connections count, so the next request beyond is refused
    at once; once they close, requests are answered again."""
    host, port = server.url.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port))) for _ in range(32)]
    try:
        time.sleep(0.5)
        refused = httpx.get(f"{server.url}/healthz", timeout=10)
        assert refused.status_code == 503
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.5)
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
