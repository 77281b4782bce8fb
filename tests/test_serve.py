"""ffd.serve: the API gives predict's rows, bad input is a 4xx with a message, limits and auth hold,
uploads stay off the disk; dynamic batching; the settings' checks."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import LIMITS, chromium, stand_in_served, write_jpegs
from fastapi import HTTPException
from hypothesis import given
from hypothesis import strategies as st
from omegaconf import OmegaConf
from PIL import Image

from ffd.config import compose_config
from ffd.data.decoding import Item
from ffd.data.records import read_manifest
from ffd.data.video.crops import CropSettings
from ffd.engine.scorers import Started, at_once
from ffd.errors import ConfigError, FfdError
from ffd.models.checkpoint import run_folder
from ffd.service.batcher import Batcher
from ffd.service.client import local_only, put_load, running_service
from ffd.service.settings import Settings
from ffd.service.uploads import display_name


def split_images(ckpt: Path, n: int) -> list[Path]:
    rows = read_manifest(run_folder(ckpt) / "manifest.csv")
    return [Path(r.path) for r in rows if r.ok and r.split == "test"][:n]


@pytest.fixture(scope="module")
def service(trained, tmp_path_factory: pytest.TempPathFactory):
    """``python -m ffd.serve`` on the trained checkpoint: (url, folder of its run)."""
    ckpt, _ = trained
    root = tmp_path_factory.mktemp("serve")
    overrides = [f"hydra.run.dir={root / 'run'}", "serve.max_files=4", "serve.max_upload_mb=4",
                 "limits.max_pixels=1000000"]  # fmt: skip
    with running_service(ckpt, *overrides, log=root / "serve.log") as running:
        url = running.url
        yield url, root


def strings(node) -> list[str]:
    """Every string in a JSON document."""
    if isinstance(node, dict):
        return [t for v in node.values() for t in strings(v)]
    if isinstance(node, list):
        return [t for v in node for t in strings(v)]
    return [node] if isinstance(node, str) else []


def post(url: str, files: list[tuple[str, bytes]], **params) -> httpx.Response:
    return httpx.post(f"{url}/v1/predict", files=[("file", f) for f in files], params=params, timeout=120)


def test_api_gives_the_rows_of_the_predict_cli(trained, service, tmp_path: Path) -> None:
    """The same files through ``python -m ffd.predict`` and over HTTP (one request with several, then
    one request each, concurrently): the same rows, p_fake to 1e-6."""
    ckpt, _ = trained
    url, _ = service
    files = split_images(ckpt, 10)
    odd = tmp_path / "odd size.png"  # another size: scored in its own forward pass
    Image.open(files[0]).resize((97, 81)).save(odd)
    files.append(odd)
    out = tmp_path / "preds.csv"
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(map(str, files)))
    cmd = [sys.executable, "-m", "ffd.predict", f"ckpt_path={ckpt}", f"input={listing}", f"output={out}"]
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    expected = list(csv.DictReader(out.open()))

    together = post(url, [(f.name, f.read_bytes()) for f in files[:4]])
    assert together.status_code == 200, together.text

    async def one_each() -> list[dict]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            answers = await asyncio.gather(
                *(client.post("/v1/predict", files={"file": (f.name, f.read_bytes())}) for f in files)
            )
        return [a.json()["results"][0] for a in answers]

    for got in (together.json()["results"], asyncio.run(one_each())):
        for row, want in zip(got, expected, strict=False):
            assert row["path"] == Path(want["path"]).name
            assert (row["label"], row["status"], row["message"]) == (want["label"], "ok", "")
            assert abs(row["p_fake"] - float(want["p_fake"])) <= 1e-6, row
    assert len({r["p_fake"] for r in asyncio.run(one_each())}) > 3  # scores that differ between images
    assert httpx.get(f"{url}/healthz").json()["largest_batch"] > 1  # concurrent requests batched


def test_model_card_docs_and_page(trained, service) -> None:
    ckpt, _ = trained
    url, _ = service
    card = httpx.get(f"{url}/v1/model").json()
    ffd_state = torch.load(ckpt, weights_only=True)["ffd"]
    assert card["threshold"] == ffd_state["threshold"] and card["temperature"] == ffd_state["temperature"]
    assert card["explain"] is True and card["input"]["dtype"] == "uint8"
    run = run_folder(ckpt)
    assert card["source"] == ckpt.name and card["training_run"] == run.name  # names, never paths
    leaked = [text for text in strings(card) if str(run.parent) in text or text.startswith("/")]
    assert not leaked, leaked
    runtime, precision = card["backbone_runtime"].split()  # chosen at start-up (serve's runtime=auto)
    assert runtime in ("torch", "onnxruntime", "openvino") and precision == "32-true"
    spec = httpx.get(f"{url}/openapi.json").json()
    assert {"/v1/predict", "/v1/model", "/healthz"} <= set(spec["paths"])
    for page in ("/", "/docs"):
        html = httpx.get(f"{url}{page}").text
        assert "<html" in html.lower() and "https://" not in html, page  # nothing fetched from the internet


def test_explain_and_face_crop(trained, service, tmp_path: Path) -> None:
    from skimage import data

    ckpt, _ = trained
    url, _ = service
    image = split_images(ckpt, 1)[0]
    size = compose_config("train").model.input_size
    answer = post(url, [(image.name, image.read_bytes())], explain="true").json()["results"][0]
    heatmap = Image.open(io.BytesIO(base64.b64decode(answer["heatmap_png"])))
    assert heatmap.size == (64, 64) != (size, size)  # the trained model's input size
    assert np.asarray(heatmap).std() > 1  # an overlay, not a blank image

    face = io.BytesIO()
    Image.fromarray(data.astronaut()).save(face, "PNG")
    noise = write_jpegs(tmp_path, ["noise.jpg"], size=300)[0].read_bytes()
    answer = post(url, [("astronaut.png", face.getvalue()), ("noise.jpg", noise)], face_crop="true")
    rows = answer.json()["results"]
    assert answer.status_code == 200 and [r["status"] for r in rows] == ["ok", "no_face"]
    crop = Image.open(io.BytesIO(base64.b64decode(rows[0]["face_crop_png"])))
    assert 100 < crop.width <= 256 and abs(crop.width - crop.height) <= 2
    alone = post(url, [("noise.jpg", noise)], face_crop="true")
    assert alone.status_code == 422 and "no face" in alone.json()["results"][0]["message"]


def test_bad_input_is_a_4xx_with_a_message(trained, service, tmp_path: Path) -> None:
    """Every bad-file kind of predict, and bad requests; the service keeps answering."""
    ckpt, _ = trained
    url, root = service
    good = split_images(ckpt, 1)[0].read_bytes()
    bomb = io.BytesIO()
    Image.new("1", (14000, 14000)).save(bomb, "PNG")  # 196 M pixels in 30 kB
    big = io.BytesIO()
    Image.new("RGB", (1100, 1000)).save(big, "PNG")  # 1.1 M pixels > limits.max_pixels
    cases = {
        "empty.jpg": (b"", "empty file"),
        "text.jpg": (b"not an image", "not an image"),
        "cut.jpg": (good[:300], "Truncated"),
        "bomb.png": (bomb.getvalue(), "DecompressionBomb"),
        "big.png": (big.getvalue(), "more than the limit of 1,000,000 pixels"),
        "noise.bin": (np.random.default_rng(0).bytes(3 * 2**20), "not an image"),
    }
    for name, (data, message) in cases.items():
        answer = post(url, [(name, data)])
        assert answer.status_code == 422, (name, answer.text)
        (row,) = answer.json()["results"]
        assert row["status"] == "unreadable" and row["p_fake"] is None and message in row["message"], row
    mixed = post(url, [("good.jpg", good), ("text.jpg", b"junk")])
    assert mixed.status_code == 200 and [r["status"] for r in mixed.json()["results"]] == ["ok", "unreadable"]

    requests = {
        "no file": (httpx.post(f"{url}/v1/predict", files={"x": (None, "1")}), 400, "has no file"),
        "not multipart": (httpx.post(f"{url}/v1/predict", content=good), 415, "multipart/form-data"),
        "too many files": (post(url, [(f"{i}.jpg", good) for i in range(5)]), 413, "serve.max_files"),
        "too large": (post(url, [("huge.bin", bytes(5 * 2**20))]), 413, "serve.max_upload_mb=4"),
        "bad flag": (post(url, [("good.jpg", good)], explain="maybe"), 422, "explain"),
    }
    for case, (answer, status, message) in requests.items():
        assert answer.status_code == status and message in answer.text, (case, answer.text)
    hostile = post(url, [("../../etc/passwd.jpg", good), ("C:\\Users\\x.jpg", good)]).json()["results"]
    assert [r["path"] for r in hostile] == ["passwd.jpg", "x.jpg"]  # names shown, never used as paths
    foreign = httpx.post(
        f"{url}/v1/predict", files={"file": ("a.jpg", good)}, headers={"host": "evil.example"}
    )
    assert foreign.status_code == 400 and "serve.allowed_hosts" in foreign.json()["detail"]  # DNS rebinding
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert {p.name for p in (root / "run").iterdir()} == {".hydra", "serve.log"}


def test_uploads_stay_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3 MB part: Starlette's own parser rolls it over to a temporary file; ffd's keeps it in memory."""
    import tempfile

    from starlette.formparsers import MultiPartParser
    from starlette.requests import Request

    from ffd.service.uploads import read_uploads

    data = np.random.default_rng(0).bytes(3 * 2**20)
    sent = httpx.Request("POST", "http://127.0.0.1/v1/predict", files={"file": ("x.jpg", data)})
    body = sent.read()

    def request() -> Request:
        chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]

        async def receive() -> dict:
            return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

        headers = [(k.lower().encode(), v.encode()) for k, v in sent.headers.items()]
        return Request({"type": "http", "method": "POST", "headers": headers}, receive)

    spilled: list[int] = []
    real = tempfile.TemporaryFile
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda *a, **k: spilled.append(1) or real(*a, **k))
    plain = request()
    default = asyncio.run(MultiPartParser(plain.headers, plain.stream()).parse())
    assert spilled and default["file"].filename == "x.jpg"  # the default would have written it to disk
    spilled.clear()
    assert asyncio.run(read_uploads(request(), 4 * 2**20, 4, 10)) == [("x.jpg", data)]
    assert not spilled
    with pytest.raises(HTTPException, match="413"):
        asyncio.run(read_uploads(request(), 2 * 2**20, 4, 10))  # no Content-Length: capped while streaming


@pytest.mark.slow
def test_token_and_log_dir(trained, tmp_path: Path) -> None:
    ckpt, _ = trained
    image = split_images(ckpt, 1)[0]
    log_dir = tmp_path / "kept"
    overrides = [f"hydra.run.dir={tmp_path / 'run'}", f"serve.log_dir={log_dir}"]
    env = {"FFD_SERVE_TOKEN": "s3cret"}
    with running_service(ckpt, *overrides, log=tmp_path / "serve.log", env=env) as running:
        url = running.url
        files = [("file", (image.name, image.read_bytes()))]
        assert httpx.post(f"{url}/v1/predict", files=files).status_code == 401
        wrong = httpx.get(f"{url}/v1/model", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "Authorization: Bearer" in wrong.json()["detail"]
        good = {"Authorization": "Bearer s3cret"}
        answer = httpx.post(f"{url}/v1/predict", files=files, headers=good, timeout=60)
        assert answer.status_code == 200 and httpx.get(f"{url}/healthz").status_code == 200
    assert "s3cret" not in (tmp_path / "serve.log").read_text()
    (kept,) = (log_dir / "uploads").iterdir()
    assert kept.read_bytes() == image.read_bytes()
    (line,) = (log_dir / "predictions.jsonl").read_text().splitlines()
    assert kept.name in line and str(answer.json()["results"][0]["p_fake"]) in line


def test_bad_settings_are_one_line_before_the_model_loads(trained, tmp_path: Path) -> None:
    ckpt, _ = trained
    for override, message in (
        ("serve.max_batch=0", "serve.max_batch=0 is not valid: it must be an integer >= 1"),
        ("serve.port=99999", "serve.port=99999"),
        ("serve.cam_method=saliency", "serve.cam_method='saliency' is not valid"),
    ):
        cmd = [sys.executable, "-m", "ffd.serve", f"ckpt_path={ckpt}", override, f"hydra.run.dir={tmp_path}"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and message in result.stdout + result.stderr, override
        assert "Traceback" not in result.stdout + result.stderr


def settings(**overrides) -> Settings:
    return Settings.from_config(
        {**OmegaConf.to_container(compose_config("serve").serve, resolve=True), **overrides}
    )


def test_settings_checks() -> None:
    assert settings().max_upload_bytes == 20 * 2**20 and settings().loopback
    for key, value in (("max_files", -1), ("max_wait_ms", "abc"), ("timeout_s", 0), ("max_batch", 1.5)):
        with pytest.raises(ConfigError, match=f"serve.{key}="):
            settings(**{key: value})
    with pytest.raises(ConfigError, match="serve.token is empty"):
        settings(token=" ")
    with pytest.raises(FfdError, match="only put on this machine"):
        local_only("http://example.com:8000")
    local_only("http://127.0.0.1:8000")


def test_port_in_use_is_a_message() -> None:
    from ffd.service.server import listen

    taken = listen("127.0.0.1", 0)
    with pytest.raises(FfdError, match="choose another serve.port"):
        listen("127.0.0.1", taken.getsockname()[1])
    taken.close()


@given(st.text(max_size=400) | st.none(), st.integers(0, 99))
def test_display_names_are_never_paths(filename: str | None, index: int) -> None:
    name = display_name(filename, index)
    assert name and "/" not in name and "\\" not in name and len(name) <= 200
    assert not any(ord(c) < 32 or ord(c) == 127 for c in name)


def test_batcher_gathers_concurrent_images_and_keeps_going_after_an_error() -> None:
    calls: list[tuple[int, ...]] = []

    def score(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        if x.shape[1] == 13:
            raise RuntimeError("model failure")
        return x.float().mean((1, 2, 3))

    async def scenario() -> tuple[list[float], str]:
        batcher = Batcher(
            at_once(score), max_batch=4, max_wait_s=0.05, max_queue=8, model_thread=ThreadPoolExecutor(1)
        )
        batcher.start()

        def item(image: torch.Tensor) -> Item:
            return Item(Path("x.png"), "ok", image=image)

        images = [torch.full((8, 8, 3), v, dtype=torch.uint8) for v in range(6)]
        got = await asyncio.gather(*(batcher.score(item(im)) for im in images))
        with pytest.raises(RuntimeError, match="model failure"):
            await batcher.score(item(torch.zeros(13, 13, 3, dtype=torch.uint8)))
        odd = await batcher.score(item(torch.full((9, 8, 3), 7, dtype=torch.uint8)))
        await batcher.stop()
        return [*got, odd], str(batcher.stats)

    scores, stats = asyncio.run(scenario())
    assert scores == [0, 1, 2, 3, 4, 5, 7]
    assert calls == [(4, 8, 8, 3), (2, 8, 8, 3), (1, 13, 13, 3), (1, 9, 8, 3)]
    assert "'largest_batch': 4" in stats


def test_batcher_gives_a_runtime_of_its_own_threads_the_next_batch_before_this_one_is_done() -> None:
    """With ``in_flight`` 2 a second batch enters the model while the first still runs; each request
    still gets its own image's logit, and a batch that fails fails only its own requests."""
    runtime, release = ThreadPoolExecutor(2), threading.Event()
    running, most, lock = [0], [0], threading.Lock()

    def trunk(x: torch.Tensor) -> torch.Tensor:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        release.wait(10)
        with lock:
            running[0] -= 1
        if x.shape[1] == 13:
            raise RuntimeError("runtime failure")
        return x.float().mean((1, 2, 3))

    def start(x: torch.Tensor) -> Started:
        return Started(runtime.submit(trunk, x), lambda features: features * 10)

    async def scenario() -> tuple[list[float], BaseException | float]:
        batcher = Batcher(start, 4, 0.01, 16, ThreadPoolExecutor(1), in_flight=2)
        batcher.start()

        def score(side: int, value: int) -> asyncio.Task[float]:
            image = torch.full((side, side, 3), value, dtype=torch.uint8)
            return asyncio.create_task(batcher.score(Item(Path("x.png"), "ok", image=image)))

        first = [score(8, v) for v in range(4)]
        while most[0] < 1:
            await asyncio.sleep(0.01)
        second = [score(13, 1), score(13, 2)]
        for _ in range(500):  # the second batch in the model too, or 5 s gone
            if most[0] >= 2:
                break
            await asyncio.sleep(0.01)
        release.set()
        got = await asyncio.gather(*first)
        failed = (await asyncio.gather(*second, return_exceptions=True))[0]
        after = await score(8, 9)
        await batcher.stop()
        return [*got, after], failed

    scores, failed = asyncio.run(scenario())
    assert most[0] == 2
    assert scores == [0, 10, 20, 30, 90]
    assert isinstance(failed, RuntimeError) and "runtime failure" in str(failed)


@pytest.mark.slow
def test_the_page_in_a_real_browser(trained, service, tmp_path: Path) -> None:
    """Headless Chromium opens the page, picks two photos and a text file: the page shows the API's
    p_fake and threshold, the heatmaps load, and the unreadable file gets its message."""
    from playwright.sync_api import sync_playwright

    ckpt, _ = trained
    url, _ = service
    photos = split_images(ckpt, 2)
    junk = tmp_path / "notes.jpg"
    junk.write_text("not a photo")
    api = post(url, [(f.name, f.read_bytes()) for f in photos]).json()
    expected = {r["path"]: r["p_fake"] for r in api["results"]}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(url)
        page.wait_for_selector("#model:has-text('threshold')")
        page.set_input_files("#files", [str(p) for p in [*photos, junk]])
        page.wait_for_function("document.querySelectorAll('.result').length === 3", timeout=60_000)
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        for photo in photos:
            card = page.locator(f'.result[data-name="{photo.name}"]')
            assert abs(float(card.locator(".p-fake").inner_text()) - expected[photo.name]) <= 5e-7
            assert float(card.locator(".threshold").inner_text()) == pytest.approx(api["threshold"], abs=5e-5)
            assert card.locator(".label").inner_text().lower() in ("real", "fake")
            size = card.locator("img.overlay").evaluate("img => img.complete ? img.naturalWidth : 0")
            assert size == 64  # the heatmap decoded, at the model's input size
        message = page.locator('.result[data-name="notes.jpg"] .message').inner_text()
        assert "Could not read this file: not an image" in message
        browser.close()
    assert not errors


@pytest.mark.slow
def test_load_8_clients_30_s(trained, service) -> None:
    ckpt, _ = trained
    url, _ = service
    images = [(f.name, f.read_bytes()) for f in split_images(ckpt, 8)]
    before = httpx.get(f"{url}/healthz").json()
    result = put_load(url, images, clients=8, duration_s=30)
    after = httpx.get(f"{url}/healthz").json()
    assert result["errors"] == 0 and result["statuses"] == {200: result["requests"]}, result
    assert result["requests"] >= 8 and after["images"] - before["images"] == result["requests"]


def stand_in_app(serve: Settings, logit=None, explainer=None, band=None):
    """The service's app (in-process) around a stand-in model of input size 32: ``logit`` (default:
    each image's mean brightness), ``explainer`` (default: none), abstention ``band`` (default: none)."""
    from ffd.service.app import create_app

    served = stand_in_served(logit or (lambda x: x.float().mean((1, 2, 3)) / 255), 32, explainer, band)
    crops = CropSettings(frames=4, stride=None, scale=1.3, size=32, detector="haar")
    return create_app(served, serve, ThreadPoolExecutor(1), crops, LIMITS)  # type: ignore[arg-type]


def png_bytes(size: tuple[int, int] = (40, 40)) -> bytes:
    image = io.BytesIO()
    Image.new("RGB", size, (90, 120, 200)).save(image, "PNG")
    return image.getvalue()


def test_a_request_not_scored_in_time_is_a_503(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model, a decode or a Grad-CAM slower than serve.timeout_s: 503 with a message (decoding and
    explaining count against the budget too), and the service keeps answering."""
    import time
    from types import SimpleNamespace

    from fastapi.testclient import TestClient

    from ffd.service.app import Service

    def slow(x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.5)
        return torch.zeros(len(x))

    with TestClient(stand_in_app(settings(timeout_s=0.1), slow)) as client:
        answer = client.post("/v1/predict", files={"file": ("a.png", png_bytes())})
        assert answer.status_code == 503 and "serve.timeout_s=0.1" in answer.json()["detail"]
        assert client.post("/v1/predict?explain=true", files={"file": ("a.png", b"x")}).status_code == 409
        assert client.get("/healthz").status_code == 200

    slow_cam = SimpleNamespace(overlays=lambda images: time.sleep(0.5) or [Image.new("RGB", (32, 32))])
    with TestClient(stand_in_app(settings(timeout_s=0.2), explainer=slow_cam)) as client:
        assert client.post("/v1/predict", files={"file": ("a.png", png_bytes())}).status_code == 200
        answer = client.post("/v1/predict?explain=true", files={"file": ("a.png", png_bytes())})
        assert answer.status_code == 503 and "serve.timeout_s=0.2" in answer.json()["detail"]

    decode = Service.decode
    monkeypatch.setattr(Service, "decode", lambda *a: time.sleep(0.5) or decode(*a))
    with TestClient(stand_in_app(settings(timeout_s=0.2))) as client:
        answer = client.post("/v1/predict", files={"file": ("a.png", png_bytes())})
        assert answer.status_code == 503 and "serve.timeout_s=0.2" in answer.json()["detail"]


def test_inside_the_abstention_band_the_service_answers_uncertain() -> None:
    from fastapi.testclient import TestClient

    def logit(x: torch.Tensor) -> torch.Tensor:
        return x.float().mean((1, 2, 3)) / 255 - 0.5  # png_bytes(): 0.04, white: 0.5

    white = io.BytesIO()
    Image.new("RGB", (40, 40), (255, 255, 255)).save(white, "PNG")
    with TestClient(stand_in_app(settings(), logit, band={"low": -0.2, "high": 0.2})) as client:
        files = [("file", ("blue.png", png_bytes())), ("file", ("white.png", white.getvalue()))]
        rows = client.post("/v1/predict", files=files).json()["results"]
    assert [r["label"] for r in rows] == ["uncertain", "fake"], rows


def test_a_full_queue_is_a_429_with_retry_after() -> None:
    """serve.max_queue images in the service already: the next request is refused at once, with
    Retry-After and the setting's name; the places come back once requests are answered."""
    from fastapi.testclient import TestClient

    with TestClient(stand_in_app(settings(max_queue=20))) as client:
        batcher = client.app.state.service.batcher  # type: ignore[attr-defined]
        batcher.admitted = 18  # two places left: as if other requests held the rest
        three = [("file", (f"{i}.png", png_bytes())) for i in range(3)]
        refused = client.post("/v1/predict", files=three)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert "serve.max_queue" in refused.json()["detail"]
        assert client.post("/v1/predict", files=three[:2]).status_code == 200
        assert batcher.admitted == 18  # given back
        assert client.get("/healthz").json()["admitted"] == 18


def test_healthz_says_when_the_batcher_died(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batching task ends (a bug): /healthz is a 503 with the reason, requests a 503, not a hang."""
    from fastapi.testclient import TestClient

    async def broken(self) -> None:
        raise RuntimeError("a bug in the batcher")

    monkeypatch.setattr(Batcher, "_gather", broken)
    with TestClient(stand_in_app(settings())) as client:
        health = client.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "down"
        assert "RuntimeError: a bug in the batcher" in health.json()["reason"]
        answer = client.post("/v1/predict", files={"file": ("a.png", png_bytes())})
        assert answer.status_code == 503 and "a bug in the batcher" in answer.json()["detail"]


def test_cross_site_posts_are_refused_without_a_token() -> None:
    """No token: a POST whose Origin is another site is a 403 (a form on any web page could send it);
    the page's own (same origin, or X-Requested-With) and programs' (no Origin) pass. With a token,
    the token decides."""
    from fastapi.testclient import TestClient

    files = {"file": ("a.png", png_bytes())}
    with TestClient(stand_in_app(settings())) as client:
        evil = client.post("/v1/predict", files=files, headers={"Origin": "http://evil.example"})
        assert evil.status_code == 403 and "cross-site" in evil.json()["detail"]
        null = client.post("/v1/predict", files=files, headers={"Origin": "null"})
        assert null.status_code == 403
        assert (
            client.post("/v1/predict", files=files, headers={"Origin": "http://testserver"}).status_code
            == 200
        )
        page = {"Origin": "http://evil.example", "X-Requested-With": "ffd-page"}
        assert client.post("/v1/predict", files=files, headers=page).status_code == 200
        assert client.post("/v1/predict", files=files).status_code == 200
        assert client.get("/healthz", headers={"Origin": "http://evil.example"}).status_code == 200
    with TestClient(stand_in_app(settings(token="s3cret"))) as client:
        evil = client.post("/v1/predict", files=files, headers={"Origin": "http://evil.example"})
        assert evil.status_code == 401
        good = {"Origin": "http://evil.example", "Authorization": "Bearer s3cret"}
        assert client.post("/v1/predict", files=files, headers=good).status_code == 200


def test_the_page_sends_the_header_that_marks_its_posts() -> None:
    from importlib.resources import files

    page = files("ffd.service").joinpath("page.html").read_text()
    assert '"X-Requested-With": "ffd-page"' in page and page.count("headers: headers()") >= 3


def test_host_allow_list() -> None:
    """The Host names a service answers to: its own by default; a wildcard host must list them."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from ffd.service.guards import AllowedHosts, host_name

    assert settings().hosts == ("localhost", "127.0.0.1", "::1")
    assert settings(host="192.168.1.5").hosts == ("localhost", "127.0.0.1", "::1", "192.168.1.5")
    assert settings(host="0.0.0.0", allowed_hosts=["Box.lan"]).hosts == ("box.lan",)
    with pytest.raises(ConfigError, match=r"serve.host=0.0.0.0 .* serve.allowed_hosts"):
        settings(host="0.0.0.0")
    with pytest.raises(ConfigError, match="serve.allowed_hosts="):
        settings(allowed_hosts=["ex*ample.com"])
    with pytest.raises(ConfigError, match="serve.max_queue=4 is less than serve.max_files=16"):
        settings(max_queue=4)
    assert [host_name(h) for h in ("[::1]:8000", "LOCALHOST:1", "127.0.0.1", "", "[bad", None)] == [
        "::1", "localhost", "127.0.0.1", "", "", ""
    ]  # fmt: skip
    app = FastAPI()
    app.get("/")(lambda: {"ok": True})
    app.add_middleware(AllowedHosts, allowed_hosts=settings().hosts)
    client = TestClient(app)
    for host, status in (("127.0.0.1:8000", 200), ("[::1]:8000", 200), ("localhost", 200),
                         ("evil.example", 400), ("127.0.0.1.evil.example", 400), ("", 400)):  # fmt: skip
        answer = client.get("/", headers={"host": host})
        assert answer.status_code == status, host
    assert "serve.allowed_hosts" in client.get("/", headers={"host": "evil.example"}).json()["detail"]


def test_the_model_card_names_files_never_their_paths() -> None:
    from ffd.service.served import names_only

    card = {"name": "export", "source": "/srv/models/export", "training_run": "outputs/train/2026-01-01",
            "checkpoint": {"path": "/srv/runs/x/checkpoints/best.ckpt", "sha256": "ab"},
            "steps": ["resize to 224", "/255"], "files": {"model.onnx": {"sha256": "cd"}},
            "windows": "C:\\Users\\me\\model.onnx", "threshold": 0.5}  # fmt: skip
    assert names_only(card) == {
        **card, "source": "export", "training_run": "2026-01-01", "windows": "model.onnx",
        "checkpoint": {"path": "best.ckpt", "sha256": "ab"}, "steps": ["resize to 224", "255"],
    }  # fmt: skip


def test_the_upload_log_is_atomic_and_capped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from ffd.service.request_log import RequestLog

    log = RequestLog(tmp_path / "kept", max_bytes=2700)  # rows take ~160 bytes each
    row = {"path": "a.png", "p_fake": 0.5, "heatmap_png": "x" * 5000}
    asyncio.run(log.write([("a.png", b"a" * 1000), ("a2.png", b"a" * 1000)], [row, row]))  # the same bytes
    asyncio.run(log.write([("b.png", b"b" * 1000), ("c.png", b"c" * 1000)], [row, row]))
    asyncio.run(log.write([("d.png", b"d" * 100)], [row]))  # nothing fits any more: not even the row
    kept = sorted(p.stat().st_size for p in (tmp_path / "kept" / "uploads").iterdir())
    assert kept == [1000, 1000]  # a, b; c did not fit; no temporary files left behind
    lines = [json.loads(line) for line in (tmp_path / "kept" / "predictions.jsonl").read_text().splitlines()]
    assert [r["kept"] for r in lines] == [True, True, True, False]
    assert all("heatmap_png" not in r for r in lines)
    assert sum("serve.log_max_mb" in r.message for r in caplog.records) == 1  # one warning
    again = RequestLog(tmp_path / "kept", max_bytes=2700)  # a restart counts what is there
    assert again.used == sum(p.stat().st_size for p in (tmp_path / "kept").rglob("*") if p.is_file())
