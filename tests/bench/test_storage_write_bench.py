"""The storage write benchmark runs both modes and prints its JSON line last."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_storage_write_bench_compares_both_modes(tmp_path: Path) -> None:
    output = subprocess.run(
        [sys.executable, "-m", "ops.bench.storage_write", "--n", "10", "--threads", "2",
         "--rounds", "2", "--dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    result = json.loads(output.strip().splitlines()[-1])
    assert result["n"] == 20 and result["rounds"] == 2
    assert result["unnamed_wall_ms"] > 0 and result["named_wall_ms"] > 0
    assert result["wall_ratio"] == round(result["unnamed_wall_ms"] / result["named_wall_ms"], 3)
    assert list(tmp_path.iterdir()) == []  # every round's store is removed
