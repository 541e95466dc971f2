"""The ORT spinning benchmark runs both settings and prints its JSON line last."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_spinning_bench_compares_both_settings() -> None:
    output = subprocess.run(
        [sys.executable, "-m", "ops.bench.ort_spinning", "--images", "6", "--rounds", "2",
         "--threads", "2"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    result = json.loads(output.strip().splitlines()[-1])
    assert result["images"] == 6 and result["rounds"] == 2 and result["threads"] == 2
    for side in ("spin", "nospin"):
        assert result[f"{side}_wall_ms"] > 0 and result[f"{side}_cpu_ms"] > 0
        assert result[f"{side}_neighbour_units_s"] > 0  # the neighbour really ran
    assert result["cpu_ratio"] == round(result["nospin_cpu_ms"] / result["spin_cpu_ms"], 3)
