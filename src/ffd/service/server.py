"""Starting the service: settings checked, model loaded, socket bound, then uvicorn, with the
transport's guards: the Host allow-list (``serve.allowed_hosts``), at most ``serve.max_connections``
connections (uvicorn answers 503 beyond), idle keep-alive connections closed after 5 s."""

from __future__ import annotations

import gc
import logging
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvicorn
from omegaconf import DictConfig

from ffd.data.settings import Limits
from ffd.data.video.crops import model_crop_settings
from ffd.errors import FfdError
from ffd.service.app import create_app
from ffd.service.guards import AllowedHosts
from ffd.service.served import ServedModel
from ffd.service.settings import Settings

log = logging.getLogger(__name__)
KEEP_ALIVE_S = 5  # an idle connection is closed after this long: it counts against serve.max_connections


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket; port 0 takes any free one."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio then sets TCP_NODELAY
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as err:
        raise FfdError(
            f"Cannot listen on {host}:{port} ({err.strerror}): choose another serve.port (0 = any free "
            "one) or serve.host."
        ) from None
    return sock


def serve(cfg: DictConfig) -> None:
    """``python -m ffd.serve``: serve ``cfg.ckpt_path`` until interrupted."""
    settings = Settings.from_config(cfg.serve)
    model_thread = ThreadPoolExecutor(1, thread_name_prefix="ffd-model")  # see ffd.service.batcher
    runtimes = Path(cfg.paths.cache_dir) / "runtimes"
    served = model_thread.submit(
        ServedModel, cfg.ckpt_path, settings.cam_method, cfg.runtime, runtimes, settings.max_batch
    ).result()
    video_crops = model_crop_settings(cfg.video, cfg.video_as_trained, served.scorer.training_run)
    app = create_app(served, settings, model_thread, video_crops, Limits.from_config(cfg.limits))
    app.add_middleware(AllowedHosts, allowed_hosts=settings.hosts)  # outermost: checked first
    # What is loaded now (torch, the model, the libraries: ~0.5 M objects) lives as long as the process:
    # kept out of the collector's full passes, each of which would stall every request ~0.3 s.
    gc.collect()
    gc.freeze()
    sock = listen(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    log.info(
        "Serving %s (threshold %.4g) at %s/ : POST /v1/predict, GET /v1/model, docs at /docs%s",
        cfg.ckpt_path, served.scorer.threshold, url, ", bearer token required" if settings.token else "",
    )  # fmt: skip
    config = uvicorn.Config(
        app, log_config=None, access_log=settings.access_log, timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=5, limit_concurrency=settings.max_connections,
    )  # fmt: skip
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        model_thread.shutdown(wait=True)
