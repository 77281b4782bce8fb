"""What the wheel carries: every package of the tree (the list in pyproject.toml), the configs as ffd.conf."""

from __future__ import annotations

import tomllib
from importlib.resources import files
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package() -> None:
    """setuptools can't find ffd.conf and list it at once: the packages are listed by hand, and a new
    package left off the list would be missing from the wheel."""
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    src = ROOT / "src"
    found = {".".join(p.parent.relative_to(src).parts) for p in src.rglob("__init__.py")}
    assert set(listed) == found | {"ffd.conf"}


def test_the_configs_are_the_package_ffd_conf() -> None:
    conf = Path(str(files("ffd.conf")))
    assert (conf / "train.yaml").is_file() and (conf / "experiment" / "demo.yaml").is_file()
    assert conf.resolve() == (ROOT / "conf").resolve()  # this checkout: one source, not a copy
