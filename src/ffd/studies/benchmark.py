"""Benchmarking the seed recipe (``make bench`` = ``python -m ffd.bench``).

On a CIPLAB-sized synthetic set (1,081 real + 960 fake 600x600 JPEGs, made
once), in one run:

1. the seed recipe, 20 epochs, naive path (decode every epoch at full size,
   fp32, contiguous memory, glibc's default allocator) vs ffd's default path
   (feature cache, bf16, channels-last, tuned allocator): wall time, train
   img/s, peak RSS, test accuracy/AUROC, same seed and split;
2. predict throughput from the fast run's checkpoint and from its ONNX export
   (JPEG decode included) against the raw backbone forward pass at the
   checkpoint's precision (``mode=predict run_dir=RUN_DIR`` measures only this);
3. the HTTP service (``ffd.serve``) on the same checkpoint: img/s and p50/p99
   latency with 1 and 8 concurrent clients posting one image per request;
4. where the fast run's time goes: cache build vs head training.

Writes ``bench.json`` and ``bench.md`` into the bench's run folder.
Absolute times vary between machines: compare the ratios.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import torch
from omegaconf import DictConfig, OmegaConf

from ffd.config import compose_config
from ffd.data.decoding import Decoder
from ffd.data.records import read_manifest
from ffd.data.settings import Limits
from ffd.data.synthetic import ensure_synthetic
from ffd.deploy.exporting import export
from ffd.deploy.predicting import predict
from ffd.engine.scorers import CheckpointScorer, load_scorer
from ffd.engine.scoring import score_files
from ffd.errors import ConfigError
from ffd.metrics.tables import markdown_table
from ffd.models.checkpoint import load_checkpoint
from ffd.runtime import autocast_dtype, cpu_isa, cpu_name, mixed_precision
from ffd.service.client import put_load, running_service
from ffd.studies.training_runs import best_checkpoint, disk_bytes, train_process

log = logging.getLogger("ffd.bench")

VARIANTS: dict[str, tuple[list[str], dict[str, str]]] = {
    "naive": (
        [
            "data.cache.mode=none",
            "data.loader.decode_draft=false",
            "trainer.precision=32-true",
            "model.channels_last=false",
            # Its final scoring in torch too; and so its runtime measurement, made with glibc's
            # allocator, is not recorded for the other runs to reuse.
            "runtime=torch",
        ],
        {"FFD_TUNE_MALLOC": "0"},
    ),
    "fast": ([], {}),
    # The same with features quantized to uint8 (half the cache): what it costs in accuracy.
    "fast_uint8": (["data.cache.dtype=uint8"], {}),
    # Twice the default's cached views per training image: what the extra views buy.
    "fast_views8": (["data.cache.views=8"], {}),
}


def run_training(
    name: str, out: Path, data: Path, overrides: list[str], env: dict[str, str]
) -> dict[str, Any]:
    """One ``python -m ffd.train`` in a child process; its wall time, peak RSS and figures."""
    run_dir = out / name
    settings = [f"data.root={data}", f"paths.cache_dir={out / 'cache'}", "logger=csv", *overrides]
    log.info("%s: %s", name, " ".join(settings))
    wall, peak_rss = train_process(settings, run_dir, out / f"{name}.log", env)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    timings = json.loads((run_dir / "timings.json").read_text())
    run_info = json.loads((run_dir / "run_info.json").read_text())
    n_train = sum(r.ok and r.split == "train" for r in read_manifest(run_dir / "manifest.csv"))
    epochs = OmegaConf.load(run_dir / ".hydra" / "config.yaml").trainer.max_epochs
    cache = timings.get("feature_cache")
    return {
        "wall_s": round(wall, 1), "fit_s": timings["fit_s"], "setup_s": timings["setup_s"],
        "train_img_per_s": round(epochs * n_train / timings["fit_s"], 1), "peak_rss_gib": round(peak_rss, 2),
        "test_acc": round(metrics["test/acc"], 4), "test_auroc": round(metrics["test/auroc"], 4),
        "feature_cache": cache,
        "cache_mib": round(disk_bytes(Path(cache["folder"])) / 2**20, 1) if cache else None,
        "runtime": run_info.get("backbone_runtime"), "run_dir": str(run_dir),
    }  # fmt: skip


def throughput(fn: Callable[[torch.Tensor], Any], batches: list[torch.Tensor], images: int) -> float:
    fn(batches[0])  # warm-up
    start = time.perf_counter()
    for b in batches:
        fn(b)
    return images / (time.perf_counter() - start)


def held_out(run_dir: Path) -> list[Path]:
    return [
        Path(r.path) for r in read_manifest(run_dir / "manifest.csv") if r.ok and r.split in ("val", "test")
    ]


def measure_predict(run_dir: Path, out: Path, repeats: int = 2) -> dict[str, Any]:
    """img/s of ``ffd.predict`` (decode included) from the checkpoint (``runtime=auto``, as predict
    runs) and from its ONNX export, against the backbone alone in the runtime predict chose, in
    torch fp32 and at the training precision (batch of predict's size, no decoding).
    """
    ckpt = best_checkpoint(run_dir)
    files = held_out(run_dir) * repeats
    runtimes = out / "cache" / "runtimes"
    predict_cfg = compose_config("predict", [f"ckpt_path={ckpt}", "input=unused"])
    export_cfg = compose_config("export", [f"ckpt_path={ckpt}", "formats=[onnx]"])
    export_cfg.paths.output_dir, export_cfg.paths.cache_dir = str(out / "export"), str(out / "cache")
    export(export_cfg)
    checkpoint = CheckpointScorer(load_checkpoint(ckpt), predict_cfg.runtime, runtimes)
    scorers = {"checkpoint": checkpoint, "onnx": load_scorer(out / "export" / "model.onnx", "torch", None)}
    batch, limits = predict_cfg.batch_size, Limits.from_config(predict_cfg.limits)  # ffd.predict's
    result: dict[str, Any] = {}
    for name, scorer in scorers.items():
        sum(1 for _ in predict(scorer, files[: 2 * batch], batch, limits))  # warm-up: allocator, kernels
        start = time.perf_counter()
        scored = sum(row["status"] == "ok" for row in predict(scorer, files, batch, limits))
        result[f"predict_{name}_img_per_s"] = round(scored / (time.perf_counter() - start), 1)
    result["runtime"] = checkpoint.runtime_report
    # Its two parts on their own: decoding (predict's second thread: one core) and the model on
    # decoded batches (resize, normalize, trunk, head: both cores).
    start = time.perf_counter()
    decode = Decoder(int(checkpoint.preprocess["size"]), limits)
    decoded = [b.images for b in score_files(files, len, batch, decode) if b.images is not None]
    result["decode_img_per_s"] = round(len(files) / (time.perf_counter() - start), 1)
    result["model_img_per_s"] = round(throughput(checkpoint.logit, decoded, len(files)), 1)
    result["device"], result["threads"] = checkpoint.device.type, torch.get_num_threads()

    net, device = checkpoint.net, checkpoint.device
    cuda = device.type == "cuda"
    size = checkpoint.preprocess["size"]
    x = torch.randn(batch, 3, size, size, device=device)  # where the scorer put the model
    inputs = [x] * (len(files) // batch)

    def forward(b: torch.Tensor) -> None:
        net.backbone(b)
        if cuda:
            torch.cuda.synchronize()

    n = batch * len(inputs)
    assert checkpoint.runner is not None  # chosen during the warm-up
    result["backbone_chosen_img_per_s"] = round(throughput(checkpoint.runner, inputs, n), 1)
    # torch fp32, and torch at the training precision, for comparison.
    with torch.no_grad():
        result["backbone_img_per_s"] = round(throughput(forward, inputs, n), 1)
    mixed = mixed_precision(x.device.type)
    if dtype := autocast_dtype(mixed):  # where training runs in mixed precision
        with torch.no_grad(), torch.autocast(x.device.type, dtype):
            result[f"backbone_{mixed}_img_per_s"] = round(throughput(forward, inputs, n), 1)
    return result


def measure_service(run_dir: Path, out: Path, seconds: float = 20) -> dict[str, Any]:
    """``python -m ffd.serve`` on the run's checkpoint and on its ONNX export (made by
    ``measure_predict``): 1 and 8 concurrent clients, each posting one held-out image per request
    (from memory), back to back for ``seconds``."""
    images = [(p.name, p.read_bytes()) for p in held_out(run_dir)]
    result: dict[str, Any] = {}
    for name, model in (("checkpoint", best_checkpoint(run_dir)), ("onnx", out / "export")):
        folder = out / f"serve_{name}"
        with running_service(model, f"hydra.run.dir={folder}", log=folder / "serve.log") as running:
            url = running.url
            put_load(url, images, 2, 3)  # warm-up
            result[name] = {f"clients_{n}": put_load(url, images, n, seconds) for n in (1, 8)}
            result[name]["healthz"] = httpx.get(f"{url}/healthz").json()
    return result


def service_line(s: dict[str, Any], p: dict[str, float]) -> str:
    parts = []
    for name, served in s.items():
        one, eight, batch = served["clients_1"], served["clients_8"], p[f"predict_{name}_img_per_s"]
        share = 100 * eight["img_per_s"] / batch
        parts.append(
            f"from the {name}: 1 client {one['img_per_s']:.0f} img/s (p50 {one['p50_ms']:.0f} ms, p99 "
            f"{one['p99_ms']:.0f} ms), 8 clients {eight['img_per_s']:.0f} img/s ({share:.0f} % of predict's "
            f"{batch:.0f} img/s; p50 {eight['p50_ms']:.0f} ms, p99 {eight['p99_ms']:.0f} ms), "
            f"errors {one['errors'] + eight['errors']}"
        )
    return "Service (ffd.serve, one image per request, decode included): " + "; ".join(parts) + "."


def predict_line(p: dict[str, Any]) -> str:
    ckpt, onnx, chosen = (
        p["predict_checkpoint_img_per_s"],
        p["predict_onnx_img_per_s"],
        p["backbone_chosen_img_per_s"],
    )
    mixed = [
        f", torch {k.removeprefix('backbone_').removesuffix('_img_per_s')} {v:.0f} img/s"
        for k, v in p.items()
        if k.startswith("backbone_") and k.endswith("-mixed_img_per_s")
    ]
    return (
        f"Predict (fp32), decode included: {ckpt:.0f} img/s from the checkpoint, {100 * ckpt / chosen:.0f} % "
        f"of the backbone alone in the runtime it chose ({runtime_line(p['runtime'])}: {chosen:.0f} img/s; "
        f"torch fp32 {p['backbone_img_per_s']:.0f} img/s{''.join(mixed)}); "
        f"{onnx:.0f} img/s from the ONNX export (onnxruntime). {ceiling_line(p)}"
    )


def ceiling_line(p: dict[str, Any]) -> str:
    """What bounds predict on a CPU of c cores: the model on decoded images keeps all of them busy for
    1/m s an image and decoding one for 1/d s, so an image takes at least 1/m + 1/(c d) s."""
    if p.get("device") != "cpu":  # a GPU decodes and runs the model on different chips; or an older bench
        return ""
    d, m, chosen = p["decode_img_per_s"], p["model_img_per_s"], p["backbone_chosen_img_per_s"]
    ceiling = 1 / (1 / m + 1 / (p["threads"] * d))
    return (
        f"Its parts alone: decoding {d:.0f} img/s on one core; the model on decoded images (resize, "
        f"normalize, trunk, head) {m:.0f} img/s, {100 * m / chosen:.0f} % of the trunk alone. Even with "
        f"decoding overlapping the model perfectly, {p['threads']} cores give at most {ceiling:.0f} img/s "
        f"({100 * ceiling / chosen:.0f} % of the trunk alone)."
    )


def runtime_line(report: dict[str, Any] | None) -> str:
    """The runtime chosen and every candidate's measured rate, as one line of the report."""
    if not report:
        return "torch (not measured)"
    rates = ", ".join(
        f"{k} {v['img_per_s']:.0f}{'' if v['parity'] else ' (fails parity)'}"
        for k, v in report["measured"].items()
    )
    return f"{report['chosen']} (measured: {rates} img/s)"


def cache_line(run: dict[str, Any]) -> str:
    c = run["feature_cache"]
    alone = c["backbone_alone_views_per_s"]
    return (
        f"Feature cache build: {c['views']:,} views in {c['seconds']:.1f} s, {c['views_per_s']:.0f} views/s "
        f"= {100 * c['views_per_s'] / alone:.0f} % of the backbone alone ({alone:.0f} views/s on one of the "
        f"build's batches fed back to back, right after it; storing took {c['store_s']:.1f} s); "
        f"runtime {runtime_line(run['runtime'])}."
    )


def markdown(report: dict[str, Any]) -> str:
    n, f, p, runs = report["naive"], report["fast"], report["predict"], report["fast_seeds"]
    header = [
        "seed recipe, 20 epochs",
        "wall",
        "speed-up",
        "train img/s",
        "peak RSS",
        "test acc",
        "test AUROC",
    ]
    naive = "naive"
    if "measured_epochs" in n:
        naive = f"naive ({n['measured_epochs']} epochs measured, time extrapolated)"
    if "from" in n:
        naive = f"naive (run by the bench in {n['from']})"
    named = [
        (naive, n), ("ffd default", f), ("ffd default, uint8 features", report["fast_uint8"]),
        ("ffd default, 8 views", report["fast_views8"]),
    ]  # fmt: skip
    if "keras" in report:
        named.append(("Keras/TensorFlow (bench/keras_peer.py)", report["keras"]))
    rows = [
        [name, f"{r['wall_s']:.0f} s", f"{n['wall_s'] / r['wall_s']:.1f}x",
         f"{r['train_img_per_s']:.0f}" if "train_img_per_s" in r else "", f"{r['peak_rss_gib']:.2f} GiB",
         r["test_acc"], r.get("test_auroc", "")]
        for name, r in named
    ]  # fmt: skip
    lines = [f"Machine: {report['machine']}", "", *markdown_table(header, rows)]
    lines += [
        "",
        f"Speed-up (wall): **{n['wall_s'] / f['wall_s']:.1f}x**; fit only: {n['fit_s'] / f['fit_s']:.1f}x.",
        f"Fast run: manifest + feature cache {f['setup_s']:.1f} s, head training + validation "
        f"{f['fit_s'] - f['setup_s']:.1f} s, wall {f['wall_s']:.1f} s (includes start-up and test).",
        cache_line(f),
        f"uint8 features: cache {report['fast_uint8']['cache_mib']:.0f} MiB on disk vs "
        f"{f['cache_mib']:.0f} MiB in float16.",
        predict_line(p),
        service_line(report["service"], p),
    ]
    if len(runs) > 1:
        acc, auroc = (torch.tensor([r[k] for r in runs]) for k in ("test_acc", "test_auroc"))
        lines.append(
            f"ffd default over {len(runs)} training seeds (same split): test acc {acc.mean():.3f} "
            f"+/- {acc.std():.3f} (min {acc.min():.3f}), AUROC {auroc.mean():.3f} +/- {auroc.std():.3f}; "
            f"a run with the cache already built takes {min(r['wall_s'] for r in runs[1:]):.0f} s."
        )
    return "\n".join(lines) + "\n"


def keras_peer(venv: Path, script: Path, out: Path, manifest: Path) -> dict[str, Any]:
    """``bench/keras_peer.py`` (beside ffd's source) in another virtualenv (with TensorFlow): the same
    recipe, images and split."""
    python = venv / "bin" / "python"
    if not python.is_file() or not script.is_file():
        raise ConfigError(
            f"keras_venv={venv} needs {python} (a virtualenv with tensorflow) and keras_script={script} "
            "(bench/keras_peer.py of ffd's source checkout)."
        )
    result = out / "keras.json"
    cmd = [str(python), str(script), "--manifest", str(manifest), "--out", str(result)]
    log.info("keras: %s", " ".join(cmd))
    start = time.perf_counter()
    with open(out / "keras.log", "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: the Keras run failed; see {out / 'keras.log'}")
    return {
        **json.loads(result.read_text()),
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
    }


def extrapolate(run: dict[str, Any], epochs: int, of: int) -> dict[str, Any]:
    """A run of ``epochs`` epochs as one of ``of``: every epoch of the naive path costs the same (it
    decodes and runs the backbone on every image every epoch), so its wall time grows by the
    measured time per epoch. Its accuracy stays the measured one (of ``epochs`` epochs)."""
    per_epoch = (run["fit_s"] - run["setup_s"]) / epochs
    return {**run, "measured_epochs": epochs, "measured_wall_s": run["wall_s"],
            "wall_s": round(run["wall_s"] + per_epoch * (of - epochs), 1),
            "fit_s": round(run["fit_s"] + per_epoch * (of - epochs), 1)}  # fmt: skip


def bench(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Every measurement above (``mode=recipe``); writes bench.json and bench.md into ``out``.

    ``cfg.naive_epochs``: train the naive path for that many epochs only and extrapolate its time to
    the recipe's (``extrapolate``): the naive run is most of the bench's time. ``cfg.naive_from``:
    take the naive run from an earlier bench's folder (same machine; the table says so).
    """
    out.mkdir(parents=True, exist_ok=True)
    train_cfg = compose_config("train")
    data = Path(train_cfg.data.root)  # the synthetic CIPLAB-sized set of data=synthetic
    ensure_synthetic(data, **train_cfg.data.synthetic)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{cpu_name()} ({cpu_isa()})"
    machine = (
        f"{os.cpu_count()} cores, {device}, torch {torch.__version__}, Python {platform.python_version()}"
    )
    report: dict[str, Any] = {"machine": machine}
    for name, (overrides, env) in VARIANTS.items():
        if name == "naive" and (cfg.skip_naive or cfg.naive_from):
            if cfg.naive_from:
                earlier = json.loads((Path(cfg.naive_from) / "bench.json").read_text())
                report[name] = {
                    **earlier["naive"],
                    "from": str(cfg.naive_from),
                    "machine": earlier["machine"],
                }
            continue
        if name == "naive" and cfg.naive_epochs:
            run = run_training(name, out, data, [*overrides, f"trainer.max_epochs={cfg.naive_epochs}"], env)
            report[name] = extrapolate(run, cfg.naive_epochs, train_cfg.trainer.max_epochs)
        else:
            report[name] = run_training(name, out, data, overrides, env)
        log.info("%s: %s", name, report[name])
    # The seed recipe's test accuracy swings with the training seed (the split has its own): show how much.
    report["fast_seeds"] = [report["fast"]] + [
        run_training(f"fast_seed{seed}", out, data, [f"seed={seed}"], {})
        for seed in range(train_cfg.seed + 1, train_cfg.seed + cfg.seeds)
    ]
    if cfg.keras_venv:
        manifest = Path(report["fast"]["run_dir"]) / "manifest.csv"
        report["keras"] = keras_peer(Path(cfg.keras_venv), Path(cfg.keras_script), out, manifest)
    report["predict"] = measure_predict(Path(report["fast"]["run_dir"]), out)
    report["service"] = measure_service(Path(report["fast"]["run_dir"]), out)
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    if "naive" in report:
        table = markdown(report)
        (out / "bench.md").write_text(table)
        log.info("\n%s", table)
    log.info("results in %s", out)
    return report


def bench_predict(run_dir: Path, out: Path) -> dict[str, Any]:
    """Inference throughput of a training run only (``mode=predict``): predict and the service;
    writes predict.json into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = measure_predict(run_dir, out)
    result["service"] = measure_service(run_dir, out)
    (out / "predict.json").write_text(json.dumps(result, indent=2))
    log.info("%s", predict_line(result))
    log.info("%s", service_line(result["service"], result))
    return result
