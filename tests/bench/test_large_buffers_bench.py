"""The large-buffer benchmark compares both settings and prints its JSON line last."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_large_buffer_bench_compares_both_settings() -> None:
    output = subprocess.run(
        [sys.executable, "-m", "ops.bench.large_buffers", "--images", "3", "--rounds", "2"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=300,
    ).stdout  # fmt: skip
    result = json.loads(output.strip().splitlines()[-1])
    assert result["images"] == 3 and result["rounds"] == 2
    for side in ("default", "tuned"):
        assert result[f"{side}_ms"] > 0 and result[f"{side}_rss_mb"] > 0
    assert result["ms_ratio"] == round(result["tuned_ms"] / result["default_ms"], 3)
