"""Run a benchmark module as its users do and read the JSON line it prints last."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_bench(module: str, *args: str, timeout: float = 300) -> dict[str, Any]:
    output = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=timeout,
    ).stdout  # fmt: skip
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result
