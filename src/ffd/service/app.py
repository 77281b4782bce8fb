"""The HTTP API and the web page, on FastAPI (``fastapi-offline``: its API docs need no CDN).

Routes: ``GET /`` the page, ``POST /v1/predict`` (multipart file fields; ``explain``
and ``face_crop`` query flags), ``POST /v1/predict_video`` (one video file: its score and
per-frame scores), ``GET /v1/model`` (the model card), ``GET /healthz``,
``/docs`` and ``/openapi.json``. Each image gets the row ``ffd.predict`` writes
(path = the uploaded file's name), optionally with its face crop and Grad-CAM
overlay as base64 PNGs. A request where no image could be scored is answered 422,
with the rows; malformed or oversized requests 4xx with a message.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

from anyio import to_thread
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from PIL import Image
from pydantic import BaseModel

from ffd import __version__, rules
from ffd.data.decoding import Decoder, Item
from ffd.data.faces import FaceCropper
from ffd.data.settings import Limits
from ffd.data.video.crops import CropSettings
from ffd.deploy.rows import result_row
from ffd.service.batcher import Batcher
from ffd.service.served import ServedModel
from ffd.service.settings import Settings
from ffd.service.uploads import read_uploads
from ffd.service.video_uploads import VideoScorer

PREVIEW_SIDE = 256  # face crops are sent back at most this large
T = TypeVar("T")


class Row(BaseModel):
    path: str
    p_fake: float | None
    logit: float | None  # the calibrated log-odds of fake: label = fake when it reaches threshold_logit
    label: str
    status: str
    message: str
    face_crop_png: str | None = None
    heatmap_png: str | None = None


class Predictions(BaseModel):
    threshold: float  # as p_fake, for people
    threshold_logit: float
    results: list[Row]


MULTIPART = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            }
        },
    }
}


def png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def preview(crop: Image.Image) -> Image.Image:
    small = crop.copy()
    small.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    return small


class RequestLog:
    """``serve.log_dir``: each upload under its sha256 in uploads/, and its row in predictions.jsonl."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        (folder / "uploads").mkdir(parents=True, exist_ok=True)

    def write(self, data: bytes, row: dict[str, Any]) -> None:
        digest = hashlib.sha256(data).hexdigest()
        if not (path := self.folder / "uploads" / digest).exists():
            path.write_bytes(data)
        entry = {"time": datetime.now(UTC).isoformat(timespec="seconds"), "sha256": digest}
        kept = {k: v for k, v in row.items() if not k.endswith("_png")}
        with (self.folder / "predictions.jsonl").open("a") as fh:
            fh.write(json.dumps({**entry, **kept}) + "\n")


@dataclass
class Service:
    """What the routes share: the model, the settings, the batcher (started with the app), the decoders."""

    served: ServedModel
    settings: Settings
    model_thread: ThreadPoolExecutor
    video_crops: CropSettings
    limits: Limits
    batcher: Batcher | None = None
    videos: VideoScorer | None = None  # built on the first video: its face detector loads then
    crop_lock: threading.Lock = field(default_factory=threading.Lock)  # one face detector, many threads

    def __post_init__(self) -> None:
        size, settings = self.served.size, self.settings
        self.plain = Decoder(size, self.limits)
        self.cropping = Decoder(size, self.limits, FaceCropper(settings.face_margin, settings.face_detector))
        self.log = RequestLog(Path(self.settings.log_dir)) if self.settings.log_dir else None

    def decode(self, name: str, data: bytes, face_crop: bool) -> Item:
        path = Path(name)  # shown back to the client only; never opened
        if not face_crop:
            return self.plain.decode(path, data)
        with self.crop_lock:
            return self.cropping.decode(path, data)

    async def within_budget(self, work: Awaitable[T], what: str) -> T:
        """``work``'s result, or HTTP 503 once ``serve.timeout_s`` has passed."""
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                return await work
        except TimeoutError:
            raise HTTPException(
                503, f"{what} took longer than serve.timeout_s={self.settings.timeout_s:g} s: the service is "
                "busy; retry, send less per request, or raise serve.timeout_s",
            ) from None  # fmt: skip


def create_app(served: ServedModel, settings: Settings, model_thread: ThreadPoolExecutor,
               video_crops: CropSettings, limits: Limits) -> FastAPI:  # fmt: skip
    """The app for a model loaded in ``model_thread`` (one worker), where all its work runs.

    ``video_crops``: how uploaded videos are sampled and their faces cropped; ``limits``: what an upload
    may be.
    """
    service = Service(served, settings, model_thread, video_crops, limits)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.batcher = Batcher(served.scorer.logit, settings.max_batch, settings.max_wait_ms / 1000,
                                  model_thread)  # fmt: skip
        service.batcher.start()
        yield
        await service.batcher.stop()

    app = FastAPIOffline(title="ffd", version=__version__, lifespan=lifespan, summary=__doc__.split("\n")[0])
    authorized = _authorization(settings)
    _info_routes(app, service, authorized)
    _image_routes(app, service, authorized)
    _video_routes(app, service, authorized)
    return app


def _authorization(settings: Settings) -> Callable[[Request], None]:
    def authorized(request: Request) -> None:
        if settings.token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.token}".encode()):
            raise HTTPException(
                401, "missing or wrong token: send the header 'Authorization: Bearer <serve.token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip

    return authorized


def _info_routes(app: FastAPI, service: Service, authorized: Callable) -> None:
    page = files("ffd.service").joinpath("page.html").read_text()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness, and how many images and forward passes the service has run (batching at work)."""
        assert service.batcher is not None
        return {"status": "ok", **service.batcher.stats}

    @app.get("/v1/model", dependencies=[Depends(authorized)])
    async def model_card() -> dict[str, Any]:
        """The model card: input, threshold, temperature, metrics, training run; whether heatmaps work."""
        return {**service.served.card, "explain_note": service.served.explain_note}


def _image_routes(app: FastAPI, service: Service, authorized: Callable) -> None:
    served, settings = service.served, service.settings
    threshold, threshold_logit = served.scorer.threshold, served.scorer.threshold_logit

    @app.post(
        "/v1/predict", dependencies=[Depends(authorized)], response_model=Predictions,
        openapi_extra=MULTIPART, responses={422: {"description": "no image could be scored (rows say why)"}},
    )  # fmt: skip
    async def predict(request: Request, explain: bool = False, face_crop: bool = False) -> Any:
        """Score uploaded images: one row per file, as ``ffd.predict`` writes (path = the file's name)."""
        if explain and served.explainer is None:
            raise HTTPException(409, f"explain=true is not available here. {served.explain_note}")
        uploads = await read_uploads(request, settings.max_upload_bytes, settings.max_files)
        items = [await to_thread.run_sync(service.decode, name, data, face_crop) for name, data in uploads]
        ok = [it for it in items if it.image is not None]
        batcher = service.batcher
        assert batcher is not None

        async def scored() -> tuple[list[float], list[Image.Image]]:
            scores = await asyncio.gather(*(batcher.score(it) for it in ok))
            if not explain:
                return list(scores), []
            images = [it.image for it in ok]
            return list(scores), await batcher.in_model_thread(served.explainer.overlays, images)  # type: ignore[union-attr]

        scores, heatmaps = await service.within_budget(scored(), "scoring")
        logits = dict(zip(map(id, ok), scores, strict=True))
        overlays = dict(zip(map(id, ok), heatmaps, strict=False))
        rows = []
        for (name, data), item in zip(uploads, items, strict=True):
            row = result_row(name, item.status, item.message, logits.get(id(item)), threshold_logit)
            if face_crop:
                row["face_crop_png"] = png(preview(item.crop)) if item.crop is not None else None
            if explain:
                row["heatmap_png"] = png(overlays[id(item)]) if id(item) in overlays else None
            if service.log:
                service.log.write(data, row)
            rows.append(row)
        body = {"threshold": threshold, "threshold_logit": threshold_logit, "results": rows}
        return JSONResponse(body, status_code=200 if ok else 422)


def _video_routes(app: FastAPI, service: Service, authorized: Callable) -> None:
    settings, scorer = service.settings, service.served.scorer
    threshold, threshold_logit = scorer.threshold, scorer.threshold_logit

    @app.post("/v1/predict_video", dependencies=[Depends(authorized)], openapi_extra=MULTIPART)
    async def predict_video(request: Request, aggregate: str = "mean") -> Any:
        """Score one uploaded video: its row (p_fake, label, frames used, frames without a face) and
        ``frame_results`` (each sampled frame's p_fake), as ``ffd.predict`` scores a video."""
        if problem := rules.problem("video_aggregate", aggregate):
            raise HTTPException(400, problem.replace("video_aggregate", "aggregate"))
        uploads = await read_uploads(request, settings.max_upload_bytes, 1)
        assert service.batcher is not None
        if service.videos is None:
            service.videos = VideoScorer(
                service.video_crops, service.batcher.score, threshold_logit, service.limits
            )
        row = await service.within_budget(service.videos(*uploads[0], aggregate), "the video")
        status = 200 if row["p_fake"] is not None else 422  # 422: nothing could be scored (the row says why)
        body = {"threshold": threshold, "threshold_logit": threshold_logit, "result": row}
        return JSONResponse(body, status_code=status)
