"""The CT read benchmark runs end to end on a small series and prints its JSON line last."""

from __future__ import annotations

from tests.bench.runner import run_bench


def test_the_ct_read_bench_prints_both_reads() -> None:
    result = run_bench("ops.bench.ct_read", "--slices", "20", "--size", "64", timeout=300)
    assert result["slices"] == 20
    assert result["streamed_peak_mb"] > 0 and result["whole_peak_mb"] > 0
    assert result["peak_ratio"] == round(result["streamed_peak_mb"] / result["whole_peak_mb"], 3)
