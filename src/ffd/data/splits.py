"""Train/val/test splits, cross-validation folds and the label-shuffle control."""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ffd.data.facts import SPLITS
from ffd.data.records import Record
from ffd.errors import ConfigError

log = logging.getLogger(__name__)

Fold = tuple[int, int]  # (number of folds k, which fold i is the validation split)


def assign_splits(
    records: Sequence[Record], val_fraction: float, test_fraction: float, seed: int, fold: Fold | None
) -> None:
    """Stratified, seeded train/val/test split of the ok rows without a split.

    Strata are (label, difficulty, method), so every split sees each CIPLAB difficulty and each
    generator in proportion. Rows are ordered by content hash before shuffling: the split
    depends on the data and the seed only, not on file names or disk order.

    Rows of videos are split by group instead, never by frame: every crop of a video and
    every video sharing a person (``identity``) lands in one split (``video_groups``); the
    fractions count crops. Rows that came with a split (split folders, official lists) keep it;
    a split that none of the data has (GenImage and CIFAKE have no val, ForenSynths' training set
    no test) is carved out of the rows that came as train, with its fraction (``carve_missing``).

    With ``fold=(k, i)`` the test rows are the same as without it, and the rest is
    dealt into k stratified folds: fold i is val, the others train (``val_fraction``
    is unused).
    """
    val = val_fraction
    if fold is not None:
        k, i = fold
        if not (k >= 2 and 0 <= i < k):
            raise ConfigError(
                f"Cross-validation needs folds >= 2 and 0 <= fold < folds (got {k} folds, fold {i})."
            )
        if any(r.split for r in records if r.ok):
            raise ConfigError(
                "Cross-validation deals its own folds, but this data set comes pre-split "
                "(split folders or a split column); train without cv.folds."
            )
        val = 0.0
    if not (0 <= val < 1 and 0 <= test_fraction < 1 and val + test_fraction < 1):
        raise ConfigError(
            f"data.split.val_fraction ({val}) and test_fraction ({test_fraction}) "
            "must be >= 0 and sum below 1."
        )
    came_as_train = [r for r in records if r.ok and r.split == "train"]
    _deal([r for r in records if r.ok and not r.split], val, test_fraction, seed, fold)
    if fold is None:
        carve_missing(records, came_as_train, val, test_fraction, seed)


def carve_missing(
    records: Sequence[Record], train: Sequence[Record], val_fraction: float, test_fraction: float, seed: int
) -> None:
    """Deal a split that no row of ``records`` has out of ``train`` (the rows that came as train), as
    unsplit rows are dealt, with that split's fraction; a split that some rows have is left as it is."""
    present = {r.split for r in records if r.ok}
    val = 0.0 if "val" in present else val_fraction
    test = 0.0 if "test" in present else test_fraction
    if not train or not (val or test):
        return
    log.info(
        "The data set comes with no %s split: carving it out of its %d train rows.",
        " and no ".join(s for s, f in (("val", val), ("test", test)) if f), len(train),
    )  # fmt: skip
    for r in train:
        r.split = ""
    _deal(train, val, test, seed, None)


def _deal(records: Sequence[Record], val: float, test_fraction: float, seed: int, fold: Fold | None) -> None:
    """Deal rows without a split into train/val/test (or cross-validation folds): image rows stratified
    by class, difficulty and method, grouped video rows (``_split_groups``)."""
    images = [r for r in records if not r.video]
    _split_groups([r for r in records if r.video], val, test_fraction, seed, fold)
    _deal_strata(images, lambda r: (r.label, r.difficulty, r.method), val, test_fraction, seed, fold)
    wanted = [s for s, f in (("val", val), ("test", test_fraction)) if f and fold is None]
    if any(all(r.split != s for r in images) for s in wanted):
        # Strata too small for a fraction of each to round to a row (a few images per generator): the
        # split by class alone, rather than none.
        _deal_strata(images, lambda r: r.label, val, test_fraction, seed, fold)


def _deal_strata(images: Sequence[Record], key: Callable[[Record], Any], val: float, test_fraction: float,
                 seed: int, fold: Fold | None) -> None:  # fmt: skip
    strata: dict[Any, list[Record]] = defaultdict(list)
    for r in images:
        strata[key(r)].append(r)
    rng = np.random.default_rng(seed)
    for k in sorted(strata):
        rows = sorted(strata[k], key=lambda r: r.sha256)
        order = rng.permutation(len(rows))
        n_test, n_val = round(len(rows) * test_fraction), round(len(rows) * val)
        for rank, j in enumerate(order):
            if rank < n_test:
                rows[j].split = "test"
            elif fold is not None:
                rows[j].split = "val" if (rank - n_test) % fold[0] == fold[1] else "train"
            else:
                rows[j].split = "val" if rank < n_test + n_val else "train"


def video_groups(records: Sequence[Record]) -> list[list[Record]]:
    """Rows that must share a split: the crops of one video, and all videos with a person in common.

    A union-find over videos and people: FF++'s fake ``000_003`` joins 000's and 003's
    originals and the fake ``003_000``, so both people of a pair end up together.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r in records:
        for person in filter(None, r.identity.split("+")):
            parent[find("person:" + person)] = find("video:" + r.video)
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups[find("video:" + r.video)].append(r)
    return list(groups.values())


def _split_groups(
    records: Sequence[Record], val: float, test_fraction: float, seed: int, fold: Fold | None
) -> None:
    """``assign_splits`` for video rows: whole groups, stratified by the labels a group holds (FF++'s
    pairs hold both; a real/ + fake/ folder's videos one), each split about its share of crops."""
    strata: dict[tuple[int, ...], list[list[Record]]] = defaultdict(list)
    for group in video_groups(records):
        strata[tuple(sorted({r.label for r in group}))].append(group)
    rng = np.random.default_rng([seed, 1])  # its own stream: image rows split as before
    for key in sorted(strata):
        groups = sorted(strata[key], key=lambda g: min(r.sha256 for r in g))
        total = sum(map(len, groups))
        done = {"test": 0, "val": 0, "train": 0}
        dealt = 0  # groups dealt into cross-validation folds
        for j in rng.permutation(len(groups)):
            group = groups[j]
            # A group goes in while its middle stays below the split's share: the nearest count.
            if done["test"] + len(group) / 2 < test_fraction * total:
                split = "test"
            elif fold is not None:
                split, dealt = ("val" if dealt % fold[0] == fold[1] else "train"), dealt + 1
            elif done["val"] + len(group) / 2 < val * total:
                split = "val"
            else:
                split = "train"
            done[split] += len(group)
            for r in group:
                r.split = split


def shuffled_labels(records: Sequence[Record], seed: int, stream: int) -> list[Record]:
    """Copies of records with their labels permuted (seeded; one stream per split): the label-shuffle
    control."""
    labels = np.random.default_rng([seed, stream]).permutation([r.label for r in records])
    return [dataclasses.replace(r, label=int(y)) for r, y in zip(records, labels, strict=True)]


def split_rows(records: Sequence[Record], shuffle_seed: int | None) -> dict[str, list[Record]]:
    """The usable rows of each split, in content-hash order, so classes are interleaved in every batch.

    Args:
        shuffle_seed: If given, the train and val labels are permuted with it (the
            label-shuffle control; val too, since choosing the best checkpoint on true val
            labels would leak them); test keeps the true labels.

    Raises:
        ConfigError: a split is empty.
    """
    rows = {s: sorted((r for r in records if r.ok and r.split == s), key=lambda r: r.sha256) for s in SPLITS}
    if shuffle_seed is not None:
        rows["train"] = shuffled_labels(rows["train"], shuffle_seed, stream=1)
        rows["val"] = shuffled_labels(rows["val"], shuffle_seed, stream=2)
    for split, members in rows.items():
        if not members:
            raise ConfigError(
                f"The {split} split is empty ({sum(r.ok for r in records)} usable files); use more data "
                "or set data.split.val_fraction / data.split.test_fraction above 0."
            )
    return rows
