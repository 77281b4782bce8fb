"""The AI-generated-image field's layouts (GenImage, ForenSynths, CIFAKE), data sets made of several
folders, and eval's breakdown by method."""

from __future__ import annotations

import shutil
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LIMITS, TINY, build, run_train, split_settings, tiny_model, write_jpegs
from PIL import Image

from ffd.config import compose_config
from ffd.data.facts import FAKE, REAL
from ffd.data.layouts import CsvError, DataLayoutError, discover
from ffd.data.manifest import build_manifest
from ffd.data.records import Record, read_manifest
from ffd.errors import ConfigError
from ffd.metrics.breakdowns import breakdowns


def write_pngs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n small PNGs with distinct random content (GenImage's generated images are PNGs)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, zlib.crc32(str(folder).encode())])
    paths = [folder / f"{i}.png" for i in range(n)]
    for p in paths:
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(p)
    return paths


def genimage_generator(folder: Path, train: int = 4, val: int = 2) -> Path:
    """GenImage's tree of one generator: {train,val}/{ai,nature}/ (nature JPEGs, ai PNGs)."""
    for split, n in (("train", train), ("val", val)):
        write_jpegs(folder / split / "nature", [f"n{i}.JPEG" for i in range(n)], size=32)
        write_pngs(folder / split / "ai", n)
    return folder


def genimage(root: Path, generators: tuple[str, ...] = ("ADM", "BigGAN", "glide")) -> Path:
    """<root>/<generator>/imagenet_ai_<x>/{train,val}/{ai,nature}/, as GenImage unpacks."""
    for g in generators:
        genimage_generator(root / g / f"imagenet_ai_0419_{g.lower()}")
    return root


def summary(records: list[Record]) -> Counter:
    return Counter((r.source, r.method, r.split, r.label) for r in records)


def test_genimage_keeps_generators_and_its_val_is_the_test_split(tmp_path: Path) -> None:
    records = discover(genimage(tmp_path / "GenImage"))
    expected = Counter()
    for g in ("ADM", "BigGAN", "glide"):
        for label in (REAL, FAKE):
            expected["genimage", g, "train", label] = 4
            expected["genimage", g, "test", label] = 2  # GenImage's val/ is its test set
    assert summary(records) == expected
    assert all(("/ai/" in r.path) == (r.label == FAKE) for r in records)
    # A val split is carved out of train, in every (label, method) stratum; test stays GenImage's val.
    manifest = build_manifest(tmp_path / "GenImage", **split_settings(val_fraction=0.25))
    assert Counter((r.method, r.split) for r in manifest) == {
        (g, s): n for g in ("ADM", "BigGAN", "glide") for s, n in (("train", 6), ("val", 2), ("test", 4))
    }
    assert all(r.split == "test" for r in manifest if "/val/" in r.path)


def test_one_genimage_generator(tmp_path: Path) -> None:
    records = discover(genimage_generator(tmp_path / "sdv14"))
    assert summary(records) == {
        ("genimage", "", "train", REAL): 4, ("genimage", "", "train", FAKE): 4,
        ("genimage", "", "test", REAL): 2, ("genimage", "", "test", FAKE): 2,
    }  # fmt: skip


def forensynths(root: Path) -> Path:
    """progan_train/ and progan_val/ by category (ProGAN has a category named train), and a test set
    by generator: test/progan/<category>/, test/biggan/ without categories."""
    for top, categories in (("progan_train", ("airplane", "train")), ("progan_val", ("airplane",)),
                            ("test/progan", ("cat",)), ("test", ("biggan",))):  # fmt: skip
        for c in categories:
            write_jpegs(root / top / c / "0_real", ["a.png", "b.png"], seed=1)
            write_jpegs(root / top / c / "1_fake", ["a.png", "b.png"], seed=2)
    return root


def test_forensynths(tmp_path: Path) -> None:
    records = discover(forensynths(tmp_path / "cnndetection"))
    assert {r.source for r in records} == {"forensynths"}
    assert Counter((r.method, r.split) for r in records) == {
        ("progan", "train"): 8, ("progan", "val"): 4, ("progan", "test"): 4, ("biggan", "test"): 4,
    }  # fmt: skip
    assert all((r.label == FAKE) == ("/1_fake/" in r.path) for r in records)
    # progan_train/ on its own: no split folders (its train/ is a category), and no method.
    alone = discover(tmp_path / "cnndetection" / "progan_train")
    assert {(r.split, r.method) for r in alone} == {("", "")} and len(alone) == 8


def test_cifake_and_class_names_in_any_case(tmp_path: Path) -> None:
    for split in ("train", "test"):
        write_jpegs(tmp_path / "cifake" / split / "REAL", ["0.jpg", "1.jpg", "2.jpg", "3.jpg"], seed=3)
        write_jpegs(tmp_path / "cifake" / split / "FAKE", ["0.jpg", "1.jpg", "2.jpg", "3.jpg"], seed=4)
    records = build_manifest(tmp_path / "cifake", **split_settings(val_fraction=0.25))
    assert Counter((r.source, r.split) for r in records) == {
        ("presplit", "train"): 6,
        ("presplit", "val"): 2,
        ("presplit", "test"): 8,
    }
    assert all(r.split == "test" for r in records if "/test/" in r.path)
    write_jpegs(tmp_path / "mixed" / "Nature", ["a.jpg"], seed=5)
    write_jpegs(tmp_path / "mixed" / "Synthetic", ["b.jpg"], seed=6)
    rows = discover(tmp_path / "mixed")
    assert sorted((Path(r.path).name, r.label, r.split) for r in rows) == [
        ("a.jpg", REAL, ""),
        ("b.jpg", FAKE, ""),
    ]


def test_generator_folders_are_one_data_set_with_their_methods(tmp_path: Path) -> None:
    for g in ("stylegan", "dalle"):
        write_jpegs(tmp_path / "gens" / g / "real", ["r.jpg"], seed=7)
        write_jpegs(tmp_path / "gens" / g / "fake", ["f.jpg"], seed=8)
    records = discover(tmp_path / "gens")
    assert sorted((r.method, r.label, r.split) for r in records) == [
        ("dalle", REAL, ""), ("dalle", FAKE, ""), ("stylegan", REAL, ""), ("stylegan", FAKE, ""),
    ]  # fmt: skip


def test_csv_method_column(tmp_path: Path) -> None:
    write_jpegs(tmp_path / "img", ["a.jpg", "b.jpg"], seed=9)
    csv = tmp_path / "list.csv"
    csv.write_text("path,label,split,method\nimg/a.jpg,real,train,\nimg/b.jpg,fake,test,midjourney\n")
    assert [(r.split, r.method) for r in discover(csv)] == [("train", ""), ("test", "midjourney")]
    csv.write_text("path,label,split\nimg/a.jpg,real,dev\n")
    with pytest.raises(CsvError, match="line 2, column split: 'dev'"):
        discover(csv)


def test_union_of_roots(tmp_path: Path) -> None:
    sd = genimage_generator(tmp_path / "GenImage" / "sdv14")  # no method of its own: "sdv14"
    both = tmp_path / "gens"  # generator folders: each keeps its own method
    for g in ("stylegan", "dalle"):
        write_jpegs(both / g / "real", ["r1.jpg", "r2.jpg"], seed=10)
        write_jpegs(both / g / "fake", ["f1.jpg", "f2.jpg"], seed=11)
    held_out = genimage_generator(tmp_path / "GenImage" / "adm", train=2, val=1)
    shutil.copy(sd / "train" / "ai" / "0.png", held_out / "val" / "ai" / "copy.png")  # same bytes
    csv = tmp_path / "more.csv"
    write_jpegs(tmp_path / "img", ["a.jpg", "b.jpg"], seed=12)
    csv.write_text("path,label,method\nimg/a.jpg,real,\nimg/b.jpg,fake,firefly\n")
    root = [str(sd), str(both), {"path": str(held_out / "val"), "method": "ADM", "split": "test"}, str(csv)]
    records = build_manifest(root, **split_settings(val_fraction=0.25))
    by_method = Counter((r.method, r.label) for r in records)
    assert by_method == {
        ("sdv14", REAL): 6, ("sdv14", FAKE): 6, ("stylegan", REAL): 2, ("stylegan", FAKE): 2,
        ("dalle", REAL): 2, ("dalle", FAKE): 2, ("ADM", REAL): 1, ("ADM", FAKE): 2,
        ("more", REAL): 1, ("firefly", FAKE): 1,
    }  # fmt: skip
    # The held-out member is test; GenImage's own split is kept; exact copies across members are dropped.
    assert {r.split for r in records if r.method == "ADM" and r.ok} == {"test"}
    assert all(r.split == "test" for r in records if r.method == "sdv14" and "/val/" in r.path)
    copy = next(r for r in records if r.path.endswith("copy.png"))
    twins = sorted((r for r in records if r.sha256 == copy.sha256), key=lambda r: r.status)
    assert [r.status for r in twins] == ["duplicate", "ok"] and twins[1].path in twins[0].reason
    assert {r.split for r in records if r.ok} == {"train", "val", "test"}


def test_data_module_reads_a_list_of_folders(tmp_path: Path) -> None:
    cfg = compose_config("train", ["data=ciplab", "data.loader.num_workers=0", "data.manifest_path=null"])
    settings = {"preprocess": tiny_model().preprocess, "limits": LIMITS, "features": None,
                "cache": build(cfg.data.cache, mode="none")}  # fmt: skip
    sd, adm = genimage_generator(tmp_path / "sd"), genimage_generator(tmp_path / "adm", train=2, val=2)
    dm = build(cfg.data, root=[str(sd), {"path": str(adm), "split": "test"}], **settings)
    dm.setup()
    assert {r.method for r in dm.rows["test"]} == {"sd", "adm"} and {r.method for r in dm.rows["val"]} == {
        "sd"
    }
    with pytest.raises(ConfigError, match="a synthetic set is generated into one folder"):
        build(cfg.data, root=[str(sd)], synthetic={"num_real": 4, "num_fake": 4, "seed": 0}, **settings)
    with pytest.raises(DataLayoutError, match="nope does not exist"):
        build(cfg.data, root=[str(sd), str(tmp_path / "nope")], **settings)


def test_union_mistakes_are_config_errors(tmp_path: Path) -> None:
    for name in ("a/x", "b/x"):
        write_jpegs(tmp_path / name / "real", ["r.jpg"], seed=13)
        write_jpegs(tmp_path / name / "fake", ["f.jpg"], seed=14)
    with pytest.raises(ConfigError, match="two folders named x .*method: A"):
        discover([str(tmp_path / "a/x"), str(tmp_path / "b/x")])
    named = discover([str(tmp_path / "a/x"), {"path": str(tmp_path / "b/x"), "method": "other"}])
    assert {r.method for r in named} == {"x", "other"}
    with pytest.raises(ConfigError, match="inside it"):
        discover([str(tmp_path / "a"), str(tmp_path / "a/x")])
    with pytest.raises(ConfigError, match=r"data.root\[0\] has the keys \['folder'\]"):
        discover([{"folder": str(tmp_path / "a")}])
    with pytest.raises(ConfigError, match=r"data.root\[1\].split is 'holdout'"):
        discover([str(tmp_path / "a/x"), {"path": str(tmp_path / "b/x"), "split": "holdout"}])
    with pytest.raises(ConfigError, match="data.root is \\[\\]"):
        discover([])
    with pytest.raises(DataLayoutError, match="nope does not exist"):
        discover([str(tmp_path / "a/x"), str(tmp_path / "nope")])


def test_unknown_layout_lists_the_known_ones_and_what_is_there(tmp_path: Path) -> None:
    write_pngs(tmp_path / "gen" / "train" / "ai", 1)
    write_jpegs(tmp_path / "gen" / "pictures", ["a.jpg"])
    with pytest.raises(DataLayoutError) as err:
        discover(tmp_path / "gen")
    message = str(err.value)
    assert "No known image layout under" in message and "It holds: pictures/, train/." in message
    assert "train/ai/ has no real/ or nature/ or 0_real/ beside it." in message
    for known in ("training_real", "GenImage", "ForenSynths", "CIFAKE", "path,label[,split][,method]",
                  "data.root=[DIR1,DIR2]"):  # fmt: skip
        assert known in message, known


def test_breakdown_by_method() -> None:
    records = [
        Record("/r1", REAL, "genimage", method="adm"),
        Record("/r2", REAL, "genimage", method="glide"),
        Record("/r3", REAL, "folders"),
        Record("/f1", FAKE, "genimage", method="adm"),
        Record("/f2", FAKE, "genimage", method="adm"),
        Record("/f3", FAKE, "genimage", method="glide"),
        Record("/v", FAKE, "ffpp", method="Deepfakes", video="/v.mp4", frame=0),  # the video report's
    ]
    logits = torch.tensor([-2.0, 1.0, -1.0, 2.0, 0.5, 0.0, 3.0])
    b = breakdowns(records, logits, threshold=0.8)
    assert set(b) == {"method"}  # no CIPLAB metadata
    assert b["method"]["adm"] == {
        "n_fake": 2, "auroc": pytest.approx(5 / 6), "recall": 0.5, "n_real": 1, "auroc_own_reals": 1.0
    }  # fmt: skip
    # glide's fake (0.0) against all reals (-2, 1, -1): above two of three; against its own real (1): none.
    assert b["method"]["glide"] == {
        "n_fake": 1, "auroc": pytest.approx(2 / 3), "recall": 0.0, "n_real": 1, "auroc_own_reals": 0.0
    }  # fmt: skip
    plain = [Record("/a", REAL, "folders"), Record("/b", FAKE, "folders")]
    assert breakdowns(plain, torch.tensor([-1.0, 1.0]), 0.0) == {}


@pytest.mark.slow
def test_train_on_genimage_keeps_its_split_and_methods(tmp_path: Path) -> None:
    data = genimage(tmp_path / "GenImage")
    run = tmp_path / "run"
    result = run_train(
        "+debug=fdr", f"data.root={data}", *TINY, "runtime=torch", f"hydra.run.dir={run}", cwd=tmp_path
    )  # runtime=torch: no backbone runtimes measured
    assert result.returncode == 0, result.stdout[-3000:]
    rows = read_manifest(run / "manifest.csv")
    assert {r.method for r in rows} == {"ADM", "BigGAN", "glide"}
    assert {r.source for r in rows} == {"genimage"}
    folder_split = Counter(("val/" if "/val/" in r.path else "train/", r.split) for r in rows)
    assert folder_split == {("val/", "test"): 12, ("train/", "train"): 18, ("train/", "val"): 6}
