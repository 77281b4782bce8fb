"""Videos end to end: train on a synthetic FF++-style set, eval at frame and video level, predict a clip."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import LIMITS, compose_run, run_train, stand_in_served, write_jpegs

from ffd.data.records import read_manifest
from ffd.deploy.predicting import predict_files
from ffd.evaluation.evaluating import evaluate
from ffd.metrics.resampling import bootstrap_intervals
from ffd.metrics.video import aggregate

# A tiny video_seed: 8 people x (1 real + 2 fakes), 8 frames each, 4 sampled, 64 px random-init model.
TINY_VIDEO = [
    "+experiment=video_seed", "data.synthetic.identities=8", "data.synthetic.frames=8", "data.video.frames=4",
    "data.video.size=64", "model.pretrained=false", "model.input_size=64", "trainer.max_epochs=2",
    "trainer.accelerator=cpu", "callbacks.progress_bar.refresh_rate=0", "data.loader.num_workers=0",
]  # fmt: skip


@pytest.fixture(scope="module")
def video_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """(project folder, best checkpoint, metrics) of one tiny in-process video_seed run."""
    from ffd.training.fitting import train

    root = tmp_path_factory.mktemp("video_run")
    metrics = train(compose_run("train", TINY_VIDEO, root, root / "run"))
    return root, next((root / "run" / "checkpoints").glob("epoch*.ckpt")), metrics


def test_intervals_resample_videos_not_frames() -> None:
    """32 near-copies of each video's score are not 32 samples: the video bootstrap's interval is wider."""
    gen = torch.Generator().manual_seed(0)
    video_p = torch.rand(20, generator=gen)
    labels = torch.tensor([0, 1] * 10)
    probs = video_p.repeat_interleave(32) + 0.001 * torch.rand(640, generator=gen)
    frame_y, groups = labels.repeat_interleave(32), torch.arange(20).repeat_interleave(32)
    by_video = bootstrap_intervals(probs, frame_y, ["auroc"], 300, 0, groups=groups)["auroc"]
    by_frame = bootstrap_intervals(probs, frame_y, ["auroc"], 300, 0)["auroc"]
    assert by_video[1] - by_video[0] > 3 * (by_frame[1] - by_frame[0])
    idx = torch.tensor([0, 0, 0, 1, 1])
    logit = torch.logit(torch.tensor([0.1, 0.2, 0.9, 0.4, 0.6], dtype=torch.float64))  # frames' p_fake
    for how, expected in (("mean", [0.4, 0.5]), ("median", [0.2, 0.4]), ("max", [0.9, 0.6])):
        assert torch.sigmoid(aggregate(logit, idx, 2, how)).tolist() == pytest.approx(expected), how


def test_eval_reports_frame_and_video_levels(video_run, tmp_path: Path) -> None:
    root, ckpt, metrics = video_run
    manifest = read_manifest(root / "run" / "manifest.csv")
    test = [r for r in manifest if r.ok and r.split == "test"]
    assert test and all(r.video and r.frame is not None for r in test)
    cfg = compose_run("eval", [f"ckpt_path={ckpt}", "bootstrap=200"], root, tmp_path / "eval")
    report = evaluate(cfg)
    assert report["auroc"] == pytest.approx(metrics["test/auroc"], abs=1e-9)  # frame level = training's test
    video = report["video"]
    assert video["n_videos"] == len({r.video for r in test}) and video["frame"]["n"] == len(test)
    assert video["aggregate"] == "mean" and set(video["by_method"]) == {"Deepfakes", "FaceSwap"}
    lo, hi = video["video"]["auroc_ci95"]
    assert lo <= video["video"]["auroc"] <= hi
    assert report["auroc_ci95"] == video["frame"]["auroc_ci95"]  # the headline CI resamples videos too
    rows = list(csv.DictReader((tmp_path / "eval" / "video_predictions.csv").open()))
    assert len(rows) == video["n_videos"] and {int(r["frames"]) for r in rows} <= {1, 2, 3, 4}
    # The video score is the mean of that video's frame scores in predictions.csv.
    frames = list(csv.DictReader((tmp_path / "eval" / "predictions.csv").open()))
    by_path = {r.path: r.video for r in test}
    first = rows[0]
    mine = [float(f["p_fake"]) for f in frames if by_path[f["path"]] == first["video"]]
    assert float(first["p_fake"]) == pytest.approx(sum(mine) / len(mine), abs=1e-12)
    assert "## Videos" in (tmp_path / "eval" / "summary.md").read_text()
    assert (
        json.loads((tmp_path / "eval" / "metrics.json").read_text())["video"]["n_videos"] == video["n_videos"]
    )


def test_predict_on_a_clip_reproduces_eval(video_run, tmp_path: Path) -> None:
    root, ckpt, _ = video_run
    test = [r for r in read_manifest(root / "run" / "manifest.csv") if r.ok and r.split == "test"]
    clip = test[0].video
    out = tmp_path / "preds.csv"
    overrides = [f"ckpt_path={ckpt}", f"input={clip}", f"output={out}"]
    counts = predict_files(compose_run("predict", overrides, root, tmp_path / "predict"))
    assert counts["real"] + counts["fake"] == 1
    rows = list(csv.DictReader(out.open()))
    frames, (video,) = rows[:-1], rows[-1:]
    assert [int(r["frame"]) for r in frames] == [1, 3, 5, 7] and video["frame"] == ""
    assert int(video["frames"]) + int(video["no_face"]) == 4
    # The training run's sampling and crops (read from its manifest), so the same p_fake as eval's.
    cfg = compose_run("eval", [f"ckpt_path={ckpt}", "bootstrap=0"], root, tmp_path / "eval")
    evaluate(cfg)
    eval_rows = {r["video"]: r for r in csv.DictReader((tmp_path / "eval" / "video_predictions.csv").open())}
    assert float(video["p_fake"]) == pytest.approx(float(eval_rows[clip]["p_fake"]), abs=1e-5)
    assert list((tmp_path / "preds_timelines").glob("0000_*.png"))


@pytest.mark.slow
def test_video_seed_cli_round_trip(tmp_path: Path) -> None:
    """The path a user runs: ffd.train +experiment=video_seed, ffd.eval, ffd.predict input=clip.mp4."""
    run = tmp_path / "run"
    done = run_train(*TINY_VIDEO, f"paths.root_dir={tmp_path}", f"hydra.run.dir={run}", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]
    ckpt = next((run / "checkpoints").glob("epoch*.ckpt"))
    done = run_train(f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}", "bootstrap=100",
                     f"paths.root_dir={tmp_path}", cwd=tmp_path, module="ffd.eval")  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["video"]["video"]["auroc_ci95"] and report["video"]["frame"]["auroc_ci95"]
    clip = next((tmp_path / "data").rglob("000_001.mp4"))
    done = run_train(f"ckpt_path={ckpt}", f"input={clip}", f"output={tmp_path / 'p.csv'}",
                     f"hydra.run.dir={tmp_path / 'predict'}", f"paths.root_dir={tmp_path}", cwd=tmp_path,
                     module="ffd.predict")  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert rows[-1]["path"] == str(clip) and rows[-1]["label"] in ("real", "fake")
    assert list((tmp_path / "p_timelines").glob("*.png"))


def test_the_service_scores_an_uploaded_video(video_run) -> None:
    """POST /v1/predict_video: the video's row and each sampled frame's score, crops as in training."""
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient
    from omegaconf import OmegaConf

    from ffd.config import compose_config
    from ffd.data.video.crops import model_crop_settings
    from ffd.service.app import create_app
    from ffd.service.settings import Settings

    root, _, _ = video_run

    def brightness(x: torch.Tensor) -> torch.Tensor:  # a stand-in model: how bright each crop is
        return torch.logit(x.double().mean(dim=(1, 2, 3)) / 255)

    served = stand_in_served(brightness, 64, training_run=root / "run")
    cfg = compose_config("serve")
    settings = Settings.from_config(OmegaConf.to_container(cfg.serve, resolve=True))
    # as ffd.serve does
    crops = model_crop_settings(cfg.video, cfg.video_as_trained, served.scorer.training_run)
    clip = next((root / "data").rglob("001_000.mp4"))
    app = create_app(served, settings, ThreadPoolExecutor(1), crops, LIMITS)  # type: ignore[arg-type]
    with TestClient(app) as client:
        answer = client.post("/v1/predict_video", files={"file": ("clip.mp4", clip.read_bytes())})
        assert answer.status_code == 200, answer.text
        row = answer.json()["result"]
        frames = [f for f in row["frame_results"] if f["p_fake"] is not None]
        assert [f["frame"] for f in row["frame_results"]] == [1, 3, 5, 7] and row["frames"] == len(frames)
        assert row["p_fake"] == pytest.approx(sum(f["p_fake"] for f in frames) / len(frames))
        bad = client.post("/v1/predict_video", files={"file": ("clip.mp4", b"not a video")})
        assert bad.status_code == 422 and bad.json()["result"]["status"] == "unreadable"
        assert (
            client.post("/v1/predict_video?aggregate=mode", files={"file": ("a.mp4", b"x")}).status_code
            == 400
        )


def test_predict_on_a_folder_of_images_and_videos(video_run, tmp_path: Path) -> None:
    root, ckpt, _ = video_run
    folder = tmp_path / "inputs"
    folder.mkdir()
    clip = next((root / "data").rglob("002_003.mp4"))
    (folder / "b_clip.mp4").write_bytes(clip.read_bytes())
    (folder / "c_broken.mp4").write_bytes(b"not a video")
    write_jpegs(folder, ["a_photo.jpg"])
    out = tmp_path / "preds.jsonl"
    overrides = [f"ckpt_path={ckpt}", f"input={folder}", f"output={out}"]
    counts = predict_files(compose_run("predict", overrides, root, tmp_path / "predict"))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    names = [(Path(r["path"]).name, r["frame"]) for r in rows]
    assert names == [("a_photo.jpg", ""), *(("b_clip.mp4", i) for i in (1, 3, 5, 7)), ("b_clip.mp4", ""),
                     ("c_broken.mp4", "")]  # fmt: skip
    assert rows[-1]["status"] == "unreadable" and "not a readable video" in rows[-1]["message"]
    assert counts["unreadable"] == 1 and counts["real"] + counts["fake"] == 2
    assert len(list((tmp_path / "preds_timelines").glob("*.png"))) == 1


def test_robustness_sweep_runs_on_video_crops(video_run, tmp_path: Path) -> None:
    root, ckpt, _ = video_run
    overrides = [f"ckpt_path={ckpt}", "bootstrap=0", "robustness=default", "robustness.bootstrap=0",
                 "localization=null"]  # fmt: skip
    evaluate(compose_run("eval", overrides, root, tmp_path / "eval"))
    sweep = json.loads((tmp_path / "eval" / "robustness.json").read_text())
    assert sweep["images_scored"] > 0 and (tmp_path / "eval" / "robustness.md").exists()
