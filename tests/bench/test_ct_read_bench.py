"""The CT read benchmark runs end to end on a small series and prints its JSON line last."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_ct_read_bench_prints_both_reads() -> None:
    output = subprocess.run(
        [sys.executable, "-m", "ops.bench.ct_read", "--slices", "20", "--size", "64"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=300,
    ).stdout  # fmt: skip
    result = json.loads(output.strip().splitlines()[-1])
    assert result["slices"] == 20
    assert result["streamed_peak_mb"] > 0 and result["whole_peak_mb"] > 0
    assert result["peak_ratio"] == round(result["streamed_peak_mb"] / result["whole_peak_mb"], 3)
