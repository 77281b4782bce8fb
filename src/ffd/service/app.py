"""The HTTP API and the web page, on FastAPI (``fastapi-offline``: its API docs need no CDN).

Routes: ``GET /`` the page, ``POST /v1/predict`` (multipart file fields; ``explain``
and ``face_crop`` query flags), ``POST /v1/predict_video`` (one video file: its score and
per-frame scores), ``GET /v1/model`` (the model card), ``GET /healthz``,
``/docs`` and ``/openapi.json``. Each image gets the row ``ffd.predict`` writes
(path = the uploaded file's name), optionally with its face crop and Grad-CAM
overlay as base64 PNGs. A request where no image could be scored is answered 422,
with the rows; malformed or oversized requests 4xx with a message.

Every request's work is bounded: its body must arrive within ``serve.body_timeout_s`` (else 408),
its images take places among ``serve.max_queue`` (else 429 with Retry-After), and decoding (in
``serve.decode_threads`` threads, off the event loop), scoring and Grad-CAM all run within
``serve.timeout_s`` (else 503).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

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
from ffd.engine.scorers import Scorer
from ffd.service.batcher import Batcher, Overloaded, Stopped
from ffd.service.guards import SameOrigin
from ffd.service.request_log import RequestLog
from ffd.service.served import ServedModel
from ffd.service.settings import Settings
from ffd.service.uploads import read_uploads
from ffd.service.video_uploads import VideoScorer

PREVIEW_SIDE = 256  # face crops are sent back at most this large
T = TypeVar("T")
Scored = tuple[Item, float | None]  # an upload's decoded item and its logit (None: not scored)


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
OVERLOAD: dict[int | str, dict[str, Any]] = {
    408: {"description": "the body did not arrive within serve.body_timeout_s"},
    429: {"description": "serve.max_queue images are in the service already: retry after Retry-After s"},
    503: {"description": "not answered within serve.timeout_s, or the service cannot score (see /healthz)"},
}


def png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def preview(crop: Image.Image) -> Image.Image:
    small = crop.copy()
    small.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    return small


class SharedCropper(FaceCropper):
    """One face detector for every decode thread: detection one at a time (the detectors are not
    thread-safe), decoding and cropping in parallel."""

    def __init__(self, margin: float, detector: str) -> None:
        super().__init__(margin, detector)
        self.lock = threading.Lock()

    def box(self, img: Image.Image) -> tuple[int, int, int, int] | None:
        with self.lock:
            return super().box(img)


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
    decoding: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        size, settings = self.served.size, self.settings
        self.plain = Decoder(size, self.limits)
        cropper = SharedCropper(settings.face_margin, settings.face_detector)
        self.cropping = Decoder(size, self.limits, cropper)
        self.decoding = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="ffd-decode")
        self.log = RequestLog(Path(settings.log_dir), settings.log_max_bytes) if settings.log_dir else None

    def decode(self, name: str, data: bytes, face_crop: bool) -> Item:
        """An upload's Item (in a decode thread); a face crop is kept only as large as it is sent back."""
        path = Path(name)  # shown back to the client only; never opened
        if not face_crop:
            return self.plain.decode(path, data)
        item = self.cropping.decode(path, data)
        if item.crop is not None:
            item.crop = preview(item.crop)
        return item

    async def in_decoder(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in one of the ``serve.decode_threads`` threads (dropped if cancelled before)."""
        return await asyncio.get_running_loop().run_in_executor(self.decoding, fn, *args)

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

    async def score_uploads(self, uploads: Sequence[tuple[str, bytes]], face_crop: bool) -> list[Scored]:
        """Each upload decoded and scored; every image goes to the batcher once it is decoded, so a
        request's images decode while the model scores others'."""
        batcher = self.batcher
        assert batcher is not None

        async def one(name: str, data: bytes) -> Scored:
            with batcher.coming():
                item = await self.in_decoder(self.decode, name, data, face_crop)
            return item, (await batcher.score(item) if item.image is not None else None)

        tasks = [asyncio.ensure_future(one(name, data)) for name, data in uploads]
        try:
            return list(await asyncio.gather(*tasks))
        finally:  # one failed: the others stop too
            for task in tasks:
                task.cancel()

    async def heatmaps(self, scored: Sequence[Scored]) -> dict[int, Image.Image]:
        """Grad-CAM overlays of the scored items, by index: one image per turn of the model thread,
        so batches of other requests go between them and a timeout stops the rest."""
        assert self.batcher is not None and self.served.explainer is not None
        found = {}
        for i, (item, logit) in enumerate(scored):
            if logit is not None:
                (found[i],) = await self.batcher.in_model_thread(self.served.explainer.overlays, [item.image])
        return found


def rows(names: Sequence[str], scored: Sequence[Scored], scorer: Scorer, face_crop: bool,
         heatmaps: dict[int, Image.Image] | None) -> list[dict[str, Any]]:  # fmt: skip
    """The response's rows (PNGs encoded here: call it off the event loop when there are any)."""
    out = []
    for i, (name, (item, logit)) in enumerate(zip(names, scored, strict=True)):
        row = result_row(name, item.status, item.message, logit, scorer.threshold_logit, scorer.abstain_band)
        if face_crop:
            row["face_crop_png"] = png(item.crop) if item.crop is not None else None
        if heatmaps is not None:
            row["heatmap_png"] = png(heatmaps[i]) if i in heatmaps else None
        out.append(row)
    return out


def create_app(served: ServedModel, settings: Settings, model_thread: ThreadPoolExecutor,
               video_crops: CropSettings, limits: Limits) -> FastAPI:  # fmt: skip
    """The app for a model loaded in ``model_thread`` (one worker), where all its work runs.

    ``video_crops``: how uploaded videos are sampled and their faces cropped; ``limits``: what an upload
    may be. The Host allow-list is the server's (``ffd.service.server``).
    """
    service = Service(served, settings, model_thread, video_crops, limits)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.batcher = Batcher(served.scorer.start_logit, settings.max_batch, settings.max_wait_ms / 1000,
                                  settings.max_queue, model_thread, served.scorer.in_flight)  # fmt: skip
        service.batcher.start()
        yield
        await service.batcher.stop()
        service.decoding.shutdown(wait=False, cancel_futures=True)

    app = FastAPIOffline(title="ffd", version=__version__, lifespan=lifespan, summary=__doc__.split("\n")[0])
    app.state.service = service
    if settings.token is None:  # with a token, the token is what a cross-site page cannot send
        app.add_middleware(SameOrigin)
    _overload_answers(app)
    authorized = _authorization(settings)
    _info_routes(app, service, authorized)
    _image_routes(app, service, authorized)
    _video_routes(app, service, authorized)
    return app


def _overload_answers(app: FastAPI) -> None:
    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, err: Overloaded) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, 429, headers={"Retry-After": str(err.retry_after)})

    @app.exception_handler(Stopped)
    async def stopped(_: Request, err: Stopped) -> JSONResponse:
        return JSONResponse({"detail": f"the service cannot score now: {err}"}, 503)


def _authorization(settings: Settings) -> Callable[[Request], Awaitable[None]]:
    async def authorized(request: Request) -> None:  # async: FastAPI would run a plain def in a thread
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

    @app.get("/healthz", responses={503: {"description": "the service cannot score (reason says why)"}})
    async def healthz() -> JSONResponse:
        """Whether the service can score (503 with the reason if not), how many images and forward
        passes it has run (batching at work), and how many images it holds now."""
        batcher = service.batcher
        assert batcher is not None
        load = {**batcher.stats, "admitted": batcher.admitted, "max_queue": batcher.max_queue}
        if problem := batcher.problem:
            return JSONResponse({"status": "down", "reason": problem, **load}, 503)
        return JSONResponse({"status": "ok", **load})

    @app.get("/v1/model", dependencies=[Depends(authorized)])
    async def model_card() -> dict[str, Any]:
        """The model card: input, threshold, temperature, metrics, training run; whether heatmaps work.
        Files and folders are named, never their paths on the server."""
        return {**service.served.card, "explain_note": service.served.explain_note}


def _image_routes(app: FastAPI, service: Service, authorized: Callable) -> None:
    served, settings = service.served, service.settings
    threshold, threshold_logit = served.scorer.threshold, served.scorer.threshold_logit

    @app.post(
        "/v1/predict", dependencies=[Depends(authorized)], response_model=Predictions,
        openapi_extra=MULTIPART,
        responses={422: {"description": "no image could be scored (rows say why)"}, **OVERLOAD},
    )  # fmt: skip
    async def predict(request: Request, explain: bool = False, face_crop: bool = False) -> Any:
        """Score uploaded images: one row per file, as ``ffd.predict`` writes (path = the file's name)."""
        if explain and served.explainer is None:
            raise HTTPException(409, f"explain=true is not available here. {served.explain_note}")
        uploads = await read_uploads(request, settings.max_upload_bytes, settings.max_files,
                                     settings.body_timeout_s)  # fmt: skip
        assert service.batcher is not None
        names = [name for name, _ in uploads]

        async def answer() -> list[dict[str, Any]]:
            scored = await service.score_uploads(uploads, face_crop)
            heatmaps = await service.heatmaps(scored) if explain else None
            if face_crop or explain:
                return await service.in_decoder(rows, names, scored, served.scorer, face_crop, heatmaps)
            return rows(names, scored, served.scorer, face_crop, heatmaps)

        with service.batcher.admit(len(uploads)):
            found = await service.within_budget(answer(), "scoring")
        if service.log:
            await service.log.write(uploads, found)
        body = {"threshold": threshold, "threshold_logit": threshold_logit, "results": found}
        return JSONResponse(body, status_code=200 if any(r["status"] == "ok" for r in found) else 422)


def _video_routes(app: FastAPI, service: Service, authorized: Callable) -> None:
    settings, scorer = service.settings, service.served.scorer
    threshold, threshold_logit = scorer.threshold, scorer.threshold_logit
    # The face crops a video may send to the batcher at once: the places it takes.
    places = min(service.video_crops.frames or settings.max_queue, settings.max_queue)

    @app.post("/v1/predict_video", dependencies=[Depends(authorized)], openapi_extra=MULTIPART,
              responses=OVERLOAD)  # fmt: skip
    async def predict_video(request: Request, aggregate: str = "mean") -> Any:
        """Score one uploaded video: its row (p_fake, label, frames used, frames without a face) and
        ``frame_results`` (each sampled frame's p_fake), as ``ffd.predict`` scores a video."""
        if problem := rules.problem("video_aggregate", aggregate):
            raise HTTPException(400, problem.replace("video_aggregate", "aggregate"))
        uploads = await read_uploads(request, settings.max_upload_bytes, 1, settings.body_timeout_s)
        assert service.batcher is not None
        with service.batcher.admit(places):
            if service.videos is None:  # its face detector loads now, off the event loop
                service.videos = await service.in_decoder(
                    VideoScorer,
                    service.video_crops,
                    service.batcher.score,
                    threshold_logit,
                    scorer.abstain_band,
                    service.limits,
                )
            row = await service.within_budget(service.videos(*uploads[0], aggregate), "the video")
        status = 200 if row["p_fake"] is not None else 422  # 422: nothing could be scored (the row says why)
        body = {"threshold": threshold, "threshold_logit": threshold_logit, "result": row}
        return JSONResponse(body, status_code=status)
