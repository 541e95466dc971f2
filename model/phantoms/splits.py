"""The one place that says which seeds belong to which split.

A phantom is fully determined by (domain, seed); the splits are disjoint seed ranges, so a test
study can never leak into training whatever the domain mix or the number of images drawn.
"""

from __future__ import annotations

from typing import Literal

Split = Literal["train", "val", "test"]

SPLITS: dict[Split, tuple[int, int]] = {
    "train": (0, 1_000_000),
    "val": (1_000_000, 1_100_000),
    "test": (2_000_000, 2_100_000),
}


def seeds(split: Split, count: int, start: int = 0) -> range:
    lo, hi = SPLITS[split]
    if lo + start + count > hi:
        raise ValueError(f"split {split!r} has only {hi - lo} seeds")
    return range(lo + start, lo + start + count)


def split_of(seed: int) -> Split | None:
    for name, (lo, hi) in SPLITS.items():
        if lo <= seed < hi:
            return name
    return None
