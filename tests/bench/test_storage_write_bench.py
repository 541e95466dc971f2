"""The storage write benchmark runs both modes and prints its JSON line last."""

from __future__ import annotations

from pathlib import Path

from tests.bench.runner import run_bench


def test_the_storage_write_bench_compares_both_modes(tmp_path: Path) -> None:
    args = ["--n", "10", "--threads", "2", "--rounds", "2", "--dir", str(tmp_path)]
    result = run_bench("ops.bench.storage_write", *args, timeout=120)
    assert result["n"] == 20 and result["rounds"] == 2
    assert result["unnamed_wall_ms"] > 0 and result["named_wall_ms"] > 0
    assert result["wall_ratio"] == round(result["unnamed_wall_ms"] / result["named_wall_ms"], 3)
    assert list(tmp_path.iterdir()) == []  # every round's store is removed
