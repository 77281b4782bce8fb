"""Leave-one-out over a GenImage-like folder of three generators: ``ffd matrix protocol=leave_one_out``."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ffd.data.layouts import DataLayoutError
from ffd.errors import ConfigError
from ffd.studies.leave_one_out import members

GENERATORS = ("adm", "glide", "sdv14")


def genimage_like(synthetic: Path, root: Path) -> Path:
    """Three generator folders in GenImage's layout (<gen>/{train,val}/{ai,nature}/), the synthetic set's
    photographs dealt out among them."""
    reals = sorted(synthetic.rglob("training_real/*.jpg"))
    fakes = sorted(synthetic.rglob("training_fake/*.jpg"))
    for kind, files in (("nature", reals), ("ai", fakes)):
        for i, f in enumerate(files):
            gen, split = GENERATORS[i % 3], "val" if (i // 3) % 3 == 1 else "train"  # a third of each: test
            folder = root / gen / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, folder / f.name)
    return root


def test_members_are_the_generator_folders(tiny_synthetic: Path, tmp_path: Path) -> None:
    root = genimage_like(tiny_synthetic, tmp_path / "gens")
    (root / ".cache").mkdir()
    assert [m.name for m in members(root)] == list(GENERATORS)
    (tmp_path / "one" / "adm").mkdir(parents=True)
    with pytest.raises(ConfigError, match="one folder per generator or method, two or more"):
        members(tmp_path / "one")
    with pytest.raises(DataLayoutError, match="No known image layout under .*ai"):  # before any training
        members(root / "adm" / "train")


@pytest.mark.slow
def test_leave_one_out_writes_the_three_held_out_rows(tiny_synthetic: Path, tmp_path: Path) -> None:
    root = genimage_like(tiny_synthetic, tmp_path / "gens")
    settings = ["model.pretrained=false", "model.input_size=64", "trainer.max_epochs=2", "runtime=torch",
                "data.loader.num_workers=0", "trainer.accelerator=cpu"]  # fmt: skip
    tiny = "[" + ",".join(f"'{s}'" for s in settings) + "]"
    out = tmp_path / "loo"
    cmd = [sys.executable, "-m", "ffd.matrix", "protocol=leave_one_out", f"root={root}", "~recipes",
           f"+recipes={{tiny: {tiny}}}", "bootstrap=200", f"hydra.run.dir={out}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "leave_one_out.json").read_text())
    assert list(result["rows"]) == [f"tiny/{g}" for g in GENERATORS]
    for g in GENERATORS:
        row = result["rows"][f"tiny/{g}"]
        assert set(row["seen_members"]) == set(GENERATORS) - {g}  # trained on the other two
        manifest = (Path(row["run"]) / "manifest.csv").read_text()
        assert f"/{g}/" not in manifest and all(f"/{o}/" in manifest for o in set(GENERATORS) - {g})
        for s in (row["unseen"], row["seen"]):
            lo, hi = s["auroc_ci95"]
            assert lo <= s["auroc"] <= hi and 0 <= s["acc"] <= 1 and s["n"] > 0
        assert row["gap"] == pytest.approx(row["seen"]["auroc"] - row["unseen"]["auroc"])
    with (out / "leave_one_out.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 3 * (2 + 2)  # unseen, seen and each seen member
    assert "unseen AUROC" in (out / "leave_one_out.md").read_text() and (out / "leave_one_out.png").exists()
