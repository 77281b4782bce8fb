"""Faults a hostile but realistic user meets: concurrent runs on one cache, full disks, bad checkpoints,
bad settings, odd files and CSVs. Each gets a clear message or the right result, and nothing a later
run trusts is left half-written."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import string
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import (
    LIMITS,
    TINY,
    build_datamodule,
    kill_group,
    run_train,
    start_train,
    tiny_model,
    write_jpegs,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ffd.checks import ensure_writable
from ffd.config import compose_config
from ffd.data.facts import CLASS_NAMES, DIFFICULTIES, fake_name, parse_fake_name
from ffd.data.layouts import CsvError, DataLayoutError, discover
from ffd.data.manifest import scan
from ffd.data.records import read_manifest, write_manifest
from ffd.deploy.predicting import predict_files
from ffd.engine import feature_cache
from ffd.engine.scorers import load_scorer
from ffd.errors import ConfigError, FfdError
from ffd.models.checkpoint import read_checkpoint
from ffd.rules import check_config
from ffd.training.resume import resolve_ckpt_path

QUIET = ["callbacks.progress_bar.refresh_rate=0"]


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


# 1. Concurrent runs and killed builds -------------------------------------------------------------


@pytest.mark.slow
def test_two_runs_building_one_cache_both_get_the_clean_result(tiny_synthetic: Path, tmp_path: Path) -> None:
    # 224 px: the build takes seconds, so the second run surely finds the first one building.
    args = [f"data.root={tiny_synthetic}", *TINY, "model.input_size=224", "trainer.max_epochs=2", *QUIET]
    clean = run_train(
        *args, f"paths.cache_dir={tmp_path / 'own'}", f"hydra.run.dir={tmp_path / 'c'}", cwd=tmp_path
    )
    assert clean.returncode == 0, clean.stdout[-3000:]
    cache = f"paths.cache_dir={tmp_path / 'shared'}"
    a = start_train([*args, cache, f"hydra.run.dir={tmp_path / 'a'}"], tmp_path)
    b = start_train([*args, cache, f"hydra.run.dir={tmp_path / 'b'}"], tmp_path)
    out = [p.communicate(timeout=600)[0] for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, out[0][-2000:] + out[1][-2000:]
    assert sum("Feature cache: " in o for o in out) == 1  # one built it, the other waited and reused it
    assert sum("is building the feature cache" in o and "Reusing feature cache" in o for o in out) == 1
    # Every figure, losses included (a half-written cache of zeros would move them all).
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b") == pytest.approx(metrics(tmp_path / "c"))


@pytest.mark.slow
def test_a_killed_cache_build_is_never_reused(tiny_synthetic: Path, tmp_path: Path) -> None:
    args = [f"data.root={tiny_synthetic}", *TINY, "model.input_size=224", "trainer.max_epochs=1", *QUIET,
            f"paths.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    proc = start_train([*args, f"hydra.run.dir={tmp_path / 'killed'}"], tmp_path)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "cache").glob("*.partial-*/*.npy")) and time.monotonic() < deadline:
        time.sleep(0.01)
    kill_group(proc)  # mid-build
    assert not list((tmp_path / "cache").glob("features-*/meta.json"))
    again = run_train(*args, f"hydra.run.dir={tmp_path / 'again'}", cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "Reusing" not in again.stdout and "Feature cache: " in again.stdout
    assert not list((tmp_path / "cache").glob("*.partial-*"))  # the killed build's files are gone


# 2. Full disks ------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 5 MiB tmpfs (mounting needs root: CI and the dev containers run as root)."""
    disk = tmp_path / "small"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"can't mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


@pytest.mark.slow
def test_full_disk_is_a_message_and_a_rerun_elsewhere_succeeds(
    tiny_synthetic: Path, tmp_path: Path, small_disk: Path
) -> None:
    args = [f"data.root={tiny_synthetic}", *TINY, "model.input_size=224", "trainer.max_epochs=1", *QUIET]
    cache_full = run_train(
        *args, f"paths.cache_dir={small_disk}/cache", f"hydra.run.dir={tmp_path / 'r1'}", cwd=tmp_path
    )
    assert cache_full.returncode == 2
    assert "The feature cache needs" in cache_full.stdout and "paths.cache_dir" in cache_full.stdout
    assert "Traceback" not in cache_full.stdout
    # Nothing but lock files (the backbone runtimes that could not export were left out).
    assert not [p for p in (small_disk / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")]

    # The run folder on the full disk: no checkpoint with a valid-looking name is left half-written.
    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    run_full = run_train(*args, cache, f"hydra.run.dir={small_disk}/run", cwd=tmp_path)
    assert run_full.returncode == 2, run_full.stdout[-3000:]
    assert "is full: checkpoint" in run_full.stdout and "hydra.run.dir=" in run_full.stdout
    assert not list((small_disk / "run" / "checkpoints").iterdir())

    rerun = run_train(*args, cache, f"hydra.run.dir={tmp_path / 'r2'}", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert metrics(tmp_path / "r2")["test/auroc"] >= 0


def test_disk_filling_up_mid_build_leaves_nothing_trusted(
    tiny_synthetic: Path, tmp_path: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process fills the disk after the free-space check: the reservation fails with the message
    (a memory map written onto a full disk would die of SIGBUS instead)."""

    real = shutil.disk_usage
    monkeypatch.setattr(feature_cache.shutil, "disk_usage", lambda p: real(p)._replace(free=1 << 40))
    with pytest.raises(FfdError, match="filled up while building the feature cache"):
        model = tiny_model(input_size=224)
        build_datamodule(
            tiny_synthetic, model, "data.cache.mode=features", f"data.cache.dir={small_disk}"
        ).setup()
    # No file but locks (the runtimes that could not export the backbone were left out).
    assert [p.name for p in small_disk.rglob("*") if p.is_file() and not p.name.endswith(".lock")] == []


def test_a_cache_short_of_views_is_never_marked_complete(
    tiny_synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runtime that returns fewer batches than it was given (a runner bug, a lost pipeline request):
    the build counts the views it computed against those it was asked for and keeps nothing, where the
    cache would otherwise be marked complete with zeros in its place."""
    from ffd.engine.runtimes.runner import Runner

    real_map = Runner.map

    def drops_one(self: Runner, batches):  # type: ignore[no-untyped-def]
        for i, pair in enumerate(real_map(self, batches)):
            if i != 1:
                yield pair

    monkeypatch.setattr(Runner, "map", drops_one)
    with pytest.raises(FfdError, match=r"computed \d+ of \d+ views; nothing was kept"):
        build_datamodule(
            tiny_synthetic, tiny_model(input_size=64), "data.cache.mode=features", "data.cache.runtime=torch",
            f"data.cache.dir={tmp_path / 'cache'}",
        ).setup()  # fmt: skip
    assert not [p for p in (tmp_path / "cache").glob("features-*") if p.suffix != ".lock"]  # none published


# 3. Resuming from a bad checkpoint ----------------------------------------------------------------


def truncated(ckpt: Path, to: Path) -> Path:
    to.parent.mkdir(parents=True, exist_ok=True)
    to.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    return to


def test_resume_checks_the_checkpoint_before_touching_the_run_folder(trained, tmp_path: Path) -> None:
    run = tmp_path / "run"
    truncated(trained[0], run / "checkpoints" / "last.ckpt")
    (run / "csv").mkdir()
    (run / "csv" / "metrics.csv").write_text("epoch,val/auroc\n0,0.9\n")
    result = run_train("ckpt_path=last", f"hydra.run.dir={run}", *TINY, cwd=tmp_path)
    assert result.returncode == 2
    assert (
        "is not a PyTorch checkpoint: it is truncated" in result.stdout and "Traceback" not in result.stdout
    )
    assert [p.name for p in (run / "csv").iterdir()] == ["metrics.csv"]  # not renamed by a failed resume


class Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_bad_checkpoints_are_messages(trained, tmp_path: Path) -> None:
    with pytest.raises(FfdError, match="truncated or another kind of file"):
        resolve_ckpt_path(str(truncated(trained[0], tmp_path / "half.ckpt")), tmp_path)
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Evil()}, evil)
    with pytest.raises(FfdError, match="can't be loaded safely .*never pickled code"):
        resolve_ckpt_path(str(evil), tmp_path)
    text = tmp_path / "notes.ckpt"
    text.write_text("hello, I am not a checkpoint\n")
    with pytest.raises(FfdError, match=r"not a PyTorch checkpoint.*starting b'hello"):
        read_checkpoint(text)
    empty = tmp_path / "ffd_only.ckpt"
    torch.save({"ffd": {}}, empty)
    with pytest.raises(FfdError, match="lacks state_dict, hyper_parameters, pytorch-lightning_version"):
        read_checkpoint(empty)
    with pytest.raises(FfdError, match="is a folder: pass a .ckpt file in it"):
        read_checkpoint(tmp_path)


def test_predict_with_a_run_folder_names_its_checkpoints(trained) -> None:
    run = trained[0].parent.parent
    with pytest.raises(FfdError, match=r"training run folder with checkpoints/\{.*epoch.*\.ckpt"):
        load_scorer(run, "torch", None)


# 4. Bad settings fail before any work --------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.loader.batch_size=0", "data.loader.batch_size=0 is not valid: it must be an integer >= 1"),
        ("data.loader.batch_size=-1", "data.loader.batch_size=-1 is not valid"),
        ("data.loader.batch_size=abc", "data.loader.batch_size='abc' is not valid"),
        ("model.optimizer.lr=abc", "model.optimizer.lr='abc' is not valid: it must be a number > 0"),
        ("data.loader.num_workers=-2", "data.loader.num_workers=-2"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0"),
        ("data.split.test_fraction=1.5", "data.split.test_fraction=1.5"),
        ("cv.folds=1", "cv.folds=1"),
        ("model.input_size=8", "model.input_size=8"),
    ],
)
def test_bad_settings_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        check_config(compose_config("train", [override]))


def test_every_shipped_config_passes_the_checks() -> None:
    experiments = [p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml")]
    assert experiments
    for name in experiments:
        check_config(compose_config("train", [f"+experiment={name}"]))
    for task in ("eval", "predict", "export", "explain", "audit", "serve", "matrix", "bench"):
        check_config(
            compose_config(task, ["ckpt_path=x"] if task in ("eval", "export", "explain", "serve") else [])
        )


def test_bad_settings_stop_the_cli_before_the_manifest(tiny_synthetic: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_train(
        f"data.root={tiny_synthetic}", *TINY, "data.loader.batch_size=0", "model.optimizer.lr=abc",
        f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stdout
    assert (
        "data.loader.batch_size=0 is not valid" in result.stdout
        and "model.optimizer.lr='abc'" in result.stdout
    )
    assert not (run / "manifest.csv").exists() and not (tmp_path / "cache").exists()
    unwritable = run_train(f"data.root={tiny_synthetic}", *TINY, "hydra.run.dir=/proc/ffd/run", cwd=tmp_path)
    assert unwritable.returncode == 2 and "Traceback" not in unwritable.stdout
    assert "hydra.run.dir: can't write in /proc/ffd/run" in unwritable.stdout


def test_an_unwritable_folder_names_the_setting(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(
        ConfigError, match=r"paths.cache_dir: can't write in .*file/cache \(Not a directory\)"
    ):
        ensure_writable(tmp_path / "file" / "cache", "paths.cache_dir")
    ensure_writable(tmp_path / "new" / "cache", "paths.cache_dir")
    assert (tmp_path / "new" / "cache").is_dir()


# 5. Every file found gets a row --------------------------------------------------------------------


def odd_tree(root: Path) -> Path:
    tree = root / "real_and_fake_face"
    write_jpegs(tree / "training_real", ["real_00001.jpg", "real_00002.jpg"], seed=1)
    write_jpegs(tree / "training_fake", ["easy_1_1000.jpg", "fake_weird.jpg"], seed=2)
    real = tree / "training_real"
    (real / "broken.jpg").symlink_to(real / "gone.jpg")
    (real / "loop.jpg").symlink_to(real / "loop.jpg")
    (real / "z_link.jpg").symlink_to(real / "real_00001.jpg")
    return tree


def test_symlinks_and_odd_names_get_rows_with_reasons(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tree = odd_tree(tmp_path)
    rows = {Path(r.path).name: r for r in scan(tmp_path, LIMITS)}
    assert len(rows) == 7
    assert rows["broken.jpg"].status == "unreadable" and "broken symlink" in rows["broken.jpg"].reason
    assert rows["loop.jpg"].status == "unreadable" and "symlink loop" in rows["loop.jpg"].reason
    link = rows["z_link.jpg"]
    assert link.path == str(tree / "training_real" / "z_link.jpg")  # its own name, target beside it
    assert link.target == str(tree / "training_real" / "real_00001.jpg")
    assert link.status == "duplicate" and "real_00001.jpg" in link.reason
    assert rows["fake_weird.jpg"].ok and rows["fake_weird.jpg"].label == 1
    assert "not in CIPLAB's fake scheme" in rows["fake_weird.jpg"].reason
    assert "fake_weird.jpg" in caplog.text and "used as fakes" in caplog.text


def test_predict_writes_a_row_for_every_file(trained, tmp_path: Path) -> None:
    tree = odd_tree(tmp_path / "photos")
    out = tmp_path / "preds.csv"
    cfg = compose_config("predict", [f"ckpt_path={trained[0]}", f"input={tree}", f"output={out}"])
    predict_files(cfg)
    with out.open() as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    assert len(rows) == 7
    assert rows["broken.jpg"]["status"] == "unreadable" and "broken symlink" in rows["broken.jpg"]["message"]
    assert "symlink loop" in rows["loop.jpg"]["message"]
    assert rows["z_link.jpg"]["p_fake"] == rows["real_00001.jpg"]["p_fake"] != ""


def test_csv_inputs_say_which_line_and_column(tmp_path: Path) -> None:
    write_jpegs(tmp_path / "img", ["a.jpg", "b.jpg"])
    data = tmp_path / "list.csv"
    data.write_bytes("\ufeffpath,label\nimg/a.jpg,real\nimg/b.jpg,fake\n".encode())  # saved by Excel
    assert [r.label for r in discover(data)] == [0, 1]
    for body, message in [
        ("path,label\nimg/a.jpg,real\nimg/b.jpg\n", "line 3, column label: empty"),
        ("path,label\nimg/a.jpg,real\n,fake\n", "line 3, column path: empty"),
        (
            "name,kind\nimg/a.jpg,real\n",
            r"needs a header line with the columns path,label; .*\['name', 'kind'\]",
        ),
    ]:
        data.write_text(body)
        with pytest.raises(CsvError, match=message):
            discover(data)


# 6. Layouts that are near misses -------------------------------------------------------------------


def test_near_miss_layouts_say_what_was_found(tmp_path: Path) -> None:
    write_jpegs(tmp_path / "a" / "training_real", ["real_00001.jpg"])
    with pytest.raises(
        DataLayoutError, match=r"It holds: training_real/\. training_real/ has no training_fake/"
    ):
        discover(tmp_path / "a")
    write_jpegs(tmp_path / "b" / "Training_Real", ["real_00001.jpg"])
    write_jpegs(tmp_path / "b" / "training_fake", ["easy_1_1000.jpg"])
    with pytest.raises(DataLayoutError, match="Training_Real/ differs from training_real/ only in case"):
        discover(tmp_path / "b")


# Property-based: the CSV reader and CIPLAB's name parser ------------------------------------------

labels = st.sampled_from(["real", "fake", "0", "1", "REAL", " Fake "])
paths = st.text(string.ascii_letters + string.digits + "_-. /", min_size=1, max_size=20).filter(
    lambda s: s.strip() and not s.strip().startswith("/")
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(paths, labels, st.sampled_from(["", "train", "valid", "test"])), min_size=1),
       bom=st.booleans())  # fmt: skip
def test_csv_reader_reads_back_what_a_csv_writer_wrote(tmp_path: Path, rows, bom: bool) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "label", "split"])
    writer.writerows(rows)
    data = tmp_path / "list.csv"
    data.write_bytes(("\ufeff" if bom else "").encode() + buf.getvalue().encode())
    records = discover(data)
    assert len(records) == len(rows)
    for record, (path, label, split) in zip(records, rows, strict=True):
        want = label.strip().lower()
        assert record.label == (int(want) if want.isdigit() else CLASS_NAMES.index(want))
        assert record.split == {"valid": "val"}.get(split, split)
        assert record.path == os.path.abspath(tmp_path / path.strip())


bad_labels = st.text(min_size=1, max_size=8).filter(
    lambda s: "\n" not in s and "\r" not in s and s.strip().lower() not in ("0", "1", "real", "fake")
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 40), bad=bad_labels)
def test_csv_reader_names_the_bad_line(tmp_path: Path, n: int, bad: str) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerows([["path", "label"], *[["a.jpg", "real"]] * n, ["b.jpg", bad]])
    data = tmp_path / "list.csv"
    data.write_text(buf.getvalue())
    with pytest.raises(CsvError, match=f"line {n + 2}, column label"):
        discover(data)


@given(d=st.sampled_from(DIFFICULTIES), i=st.integers(0, 10**6), bits=st.text("01", min_size=4, max_size=4))
def test_fake_names_round_trip(d: str, i: int, bits: str) -> None:
    assert parse_fake_name(f"/x/{fake_name(d, i, bits)}") == (d, bits)


def test_names_that_are_not_utf8_are_kept(trained, tmp_path: Path) -> None:
    """A file name that is not UTF-8 (bytes of another system's encoding): the manifest, predict's CSV and
    its JSON Lines keep it (its bytes in the CSV, a \\udcXX escape in JSON), so the path read back opens
    the file; nothing stops at a UnicodeEncodeError after the scan."""
    tree = odd_tree(tmp_path / "photos")
    odd = tree / "training_fake" / os.fsdecode(b"easy_9_1000_caf\xe9.jpg")
    shutil.copyfile(tree / "training_fake" / "fake_weird.jpg", odd)
    rows = scan(tree, LIMITS)
    write_manifest(rows, tmp_path / "manifest.csv")
    back = {r.path: r for r in read_manifest(tmp_path / "manifest.csv")}
    assert (
        back[str(odd)].ok
        and Path(str(odd)).exists()
        and b"caf\xe9" in (tmp_path / "manifest.csv").read_bytes()
    )
    for suffix in (".csv", ".jsonl"):
        out = tmp_path / f"preds{suffix}"
        predict_files(
            compose_config("predict", [f"ckpt_path={trained[0]}", f"input={tree}", f"output={out}"])
        )
        with out.open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
            found = list(csv.DictReader(fh)) if suffix == ".csv" else [json.loads(line) for line in fh]
        (row,) = [r for r in found if r["path"] == str(odd)]
        assert row["status"] == "ok" and Path(row["path"]).read_bytes() == odd.read_bytes()
