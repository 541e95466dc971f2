"""Summaries shared by the benchmarks that alternate two settings round by round in one run."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence


def paired_medians(
    results: Mapping[str, Sequence[Sequence[float]]], fields: Sequence[str], digits: int
) -> dict[str, float]:
    """{"<side>_<field>": median over rounds}; results[side] holds one tuple of `fields` per
    round, in that order."""
    return {
        f"{side}_{field}": round(statistics.median(row[i] for row in rows), digits)
        for side, rows in results.items()
        for i, field in enumerate(fields)
    }


def ratio(line: Mapping[str, float], numerator: str, denominator: str) -> float:
    """line[numerator] / line[denominator], to three places."""
    return round(line[numerator] / line[denominator], 3)
