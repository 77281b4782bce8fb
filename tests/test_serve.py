"""ffd.serve: the API gives predict's rows, bad input is a 4xx with a message, limits and auth hold,
uploads stay off the disk; dynamic batching; the settings' checks."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import LIMITS, chromium, write_jpegs
from fastapi import HTTPException
from hypothesis import given
from hypothesis import strategies as st
from omegaconf import OmegaConf
from PIL import Image

from ffd.config import compose_config
from ffd.data.decoding import Item
from ffd.data.records import read_manifest
from ffd.data.video.crops import CropSettings
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
    with running_service(ckpt, *overrides, log=root / "serve.log") as url:
        yield url, root


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
    assert asyncio.run(read_uploads(request(), 4 * 2**20, 4)) == [("x.jpg", data)]
    assert not spilled
    with pytest.raises(HTTPException, match="413"):
        asyncio.run(read_uploads(request(), 2 * 2**20, 4))  # no Content-Length: capped while streaming


def test_token_and_log_dir(trained, tmp_path: Path) -> None:
    ckpt, _ = trained
    image = split_images(ckpt, 1)[0]
    log_dir = tmp_path / "kept"
    overrides = [f"hydra.run.dir={tmp_path / 'run'}", f"serve.log_dir={log_dir}"]
    env = {"FFD_SERVE_TOKEN": "s3cret"}
    with running_service(ckpt, *overrides, log=tmp_path / "serve.log", env=env) as url:
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
        batcher = Batcher(score, max_batch=4, max_wait_s=0.05, model_thread=ThreadPoolExecutor(1))
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


def test_a_request_not_scored_in_time_is_a_503() -> None:
    """A model slower than serve.timeout_s: 503 with a message, and the service keeps answering."""
    import time
    from types import SimpleNamespace

    from fastapi.testclient import TestClient

    from ffd.service.app import create_app

    def slow(x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.5)
        return torch.zeros(len(x))

    scorer = SimpleNamespace(logit=slow, threshold=0.5, threshold_logit=0.0, preprocess={"size": 32})
    served = SimpleNamespace(scorer=scorer, size=32, explainer=None, explain_note="No heatmaps.", card={})
    image = io.BytesIO()
    Image.new("RGB", (40, 40)).save(image, "PNG")
    crops = CropSettings(frames=4, stride=None, scale=1.3, size=32, detector="haar")
    app = create_app(served, settings(timeout_s=0.1), ThreadPoolExecutor(1), crops, LIMITS)  # type: ignore[arg-type]
    with TestClient(app) as client:
        answer = client.post("/v1/predict", files={"file": ("a.png", image.getvalue())})
        assert answer.status_code == 503 and "serve.timeout_s=0.1" in answer.json()["detail"]
        assert client.post("/v1/predict?explain=true", files={"file": ("a.png", b"x")}).status_code == 409
        assert client.get("/healthz").status_code == 200
