"""Image data sets laid out in folders: where the class folders are, and the split and method above them.

One walk of the data folder finds every folder holding a pair of class folders (a real one and a
fake one) and every CIPLAB pair (``training_real/`` + ``training_fake/``), and goes no deeper:

- Class folders, in any case: real is ``real/``, ``nature/`` (GenImage) or ``0_real/`` (ForenSynths);
  fake is ``fake/``, ``ai/`` (GenImage), ``1_fake/`` (ForenSynths) or ``synthetic/``.
- Split: the outermost folder above them named ``train``, ``val`` (``valid``, ``validation``) or
  ``test``, or ``<name>_<split>`` (ForenSynths' ``progan_train/``: its ``<name>`` is the method).
  GenImage has no test folder: its ``val/`` is its test set, so with ``ai/`` + ``nature/`` class
  folders and no test folder anywhere, ``val`` means test.
- Method: the generator's folder, the outermost level where the data set branches into several
  folders, not counting split folders and ForenSynths' object categories (``airplane/`` ...
  ``tvmonitor/``): GenImage's ``<generator>/``, ForenSynths' ``test/<generator>/``. A folder alone
  on the way is none (GenImage's ``<generator>/imagenet_ai_.../`` pointed at on its own has no
  method), and ``<name>_<split>/`` names the method of what it holds.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ffd.data.facts import CIPLAB_FOLDERS, FAKE, REAL

REAL_FOLDERS = ("real", "nature", "0_real")  # lower case: a folder's name matches in any case
FAKE_FOLDERS = ("fake", "ai", "1_fake", "synthetic")
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
# ForenSynths (CNNDetection) groups each generator's images by LSUN object category: a folder so named
# (holding 0_real/ + 1_fake/) is a category, never a method. Its ProGAN set has a category "train".
FORENSYNTHS_CATEGORIES = frozenset({
    "airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
    "bedroom", "church", "apple", "orange", "summer", "winter", "zebra",
})  # fmt: skip
Chain = tuple[str, ...]  # the folders between the root and a class folder that may name its method
SKIPPED = ("__MACOSX",)  # macOS's zip resource forks mirror the tree with files that are no images


@dataclasses.dataclass(frozen=True)
class ClassFolder:
    """A folder of one class, as found.

    Attributes:
        path: The folder (its images are found recursively).
        label: REAL or FAKE.
        source: The layout: ciplab, genimage, forensynths, presplit (split folders) or folders.
        split: The split its folders give (train, val, test), or empty.
        method: The generator or method its folders give, or empty.
    """

    path: Path
    label: int
    source: str
    split: str = ""
    method: str = ""


def _split_folder(name: str) -> tuple[str, str] | None:
    """(split, method) of a split folder's name (``val``, ``progan_train``), or None if it names none."""
    low = name.lower()
    if low in SPLIT_FOLDERS:
        return SPLIT_FOLDERS[low], ""
    prefix, _, suffix = name.rpartition("_")
    return (SPLIT_FOLDERS[suffix.lower()], prefix) if prefix and suffix.lower() in SPLIT_FOLDERS else None


def _below(
    split: str, method: str, chain: Chain, name: str, among_categories: bool
) -> tuple[str, str, Chain]:
    """Split, method and chain of method candidates of a sub-folder ``name`` of a folder that has them.

    A folder named like a split among ForenSynths categories (ProGAN's ``train/``) is a category.
    """
    category = name.lower() in FORENSYNTHS_CATEGORIES
    if not split and not (category and among_categories) and (found := _split_folder(name)):
        return found[0], method or found[1], chain
    return split, method, chain if category else (*chain, name)


def _branch(chain: Chain, chains: list[Chain]) -> str:
    """The first folder of a chain where the data set's chains (sharing what is above) part ways."""
    for k, name in enumerate(chain):
        if len({c[k] for c in chains if len(c) > k and c[:k] == chain[:k]}) > 1:
            return name
    return ""


def _source(names: list[str], split: str) -> str:
    low = {n.lower() for n in names}
    if low & {"nature", "ai"}:
        return "genimage"
    if low & {"0_real", "1_fake"}:
        return "forensynths"
    return "presplit" if split else "folders"


def find_class_folders(root: Path) -> list[ClassFolder]:
    """Every class folder under root, with the split and method its folders give (see the module doc)."""
    found: list[tuple[ClassFolder, Chain]] = []
    above: dict[Path, tuple[str, str, Chain]] = {root: ("", "", ())}  # of each folder to visit
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        split, method, chain = above.pop(here)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIPPED)
        if all(d in dirnames for d in CIPLAB_FOLDERS):
            found += [(ClassFolder(here / d, label, "ciplab"), ()) for label, d in enumerate(CIPLAB_FOLDERS)]
            dirnames.clear()
            continue
        real = [d for d in dirnames if d.lower() in REAL_FOLDERS]
        fake = [d for d in dirnames if d.lower() in FAKE_FOLDERS]
        if real and fake:
            source = _source(real + fake, split)
            for label, names in ((REAL, real), (FAKE, fake)):
                found += [(ClassFolder(here / d, label, source, split, method), chain) for d in names]
            dirnames.clear()
            continue
        categories = any(d.lower() in FORENSYNTHS_CATEGORIES and not _split_folder(d) for d in dirnames)
        for d in dirnames:
            above[here / d] = _below(split, method, chain, d, categories)
    chains = [chain for _, chain in found]
    folders = [dataclasses.replace(f, method=f.method or _branch(chain, chains)) for f, chain in found]
    if any(f.source == "genimage" for f in folders) and not any(f.split == "test" for f in folders):
        folders = [
            dataclasses.replace(f, split="test") if f.source == "genimage" and f.split == "val" else f
            for f in folders
        ]
    return folders
