"""The ORT spinning benchmark runs both settings and prints its JSON line last."""

from __future__ import annotations

from tests.bench.runner import run_bench


def test_the_spinning_bench_compares_both_settings() -> None:
    result = run_bench(
        "ops.bench.ort_spinning", "--images", "6", "--rounds", "2", "--threads", "2", timeout=120
    )
    assert result["images"] == 6 and result["rounds"] == 2 and result["threads"] == 2
    for side in ("spin", "nospin"):
        assert result[f"{side}_wall_ms"] > 0 and result[f"{side}_cpu_ms"] > 0
        assert result[f"{side}_neighbour_units_s"] > 0  # the neighbour really ran
    assert result["cpu_ratio"] == round(result["nospin_cpu_ms"] / result["spin_cpu_ms"], 3)
