"""The large-buffer benchmark compares both settings and prints its JSON line last."""

from __future__ import annotations

from tests.bench.runner import run_bench


def test_the_large_buffer_bench_compares_both_settings() -> None:
    result = run_bench("ops.bench.large_buffers", "--images", "3", "--rounds", "2", timeout=300)
    assert result["images"] == 3 and result["rounds"] == 2
    for side in ("default", "tuned"):
        assert result[f"{side}_ms"] > 0 and result[f"{side}_rss_mb"] > 0
    assert result["ms_ratio"] == round(result["tuned_ms"] / result["default_ms"], 3)
