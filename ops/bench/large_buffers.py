"""Reading and preprocessing a full-size chest X-ray with glibc's defaults and with
`shared.large_buffers.keep_large_buffers()`, alternated in one run.

    .venv/bin/python -m ops.bench.large_buffers [--images 12] [--rounds 4]

Each round starts two fresh processes, one per setting (malloc settings are per process); each
reads the same 3000 × 2835 phantom X-ray (17 MB) with `shared.dicom.pixels.read_frames` and
preprocesses it for the model, `--images` times in a worker thread as the model workers do,
and reports the median ms per image (the first two left out: the first touches new memory either
way) and its resident memory at the end. Last line JSON: {"default_ms", "tuned_ms",
"default_rss_mb", "tuned_rss_mb", "ms_ratio", "rss_ratio", ...}: medians over rounds; ratios
are tuned / default.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ops.bench.paired import paired_medians, ratio
from shared.config import REPO_ROOT

ONE_PROCESS = """
import json, statistics, sys, threading, time
if sys.argv[1] == "tuned":
    from shared.large_buffers import keep_large_buffers
    assert keep_large_buffers()
from shared.dicom.pixels import read_frames
from shared.inference.preprocess import preprocess
path, n = sys.argv[2], int(sys.argv[3])
times = []
def images():
    for _ in range(n):
        start = time.perf_counter()
        frame = read_frames(path)[0]
        preprocess(frame.pixels, *frame.window, 256, "DX")
        times.append((time.perf_counter() - start) * 1000)
worker = threading.Thread(target=images)
worker.start()
worker.join()
rss_mb = int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
print(json.dumps([statistics.median(times[2:]), rss_mb]))
"""


def one_process(mode: str, path: Path, images: int) -> tuple[float, float]:
    # No MALLOC_* from the caller's environment: the comparison is defaults against ours.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    out = subprocess.run(
        [sys.executable, "-c", ONE_PROCESS, mode, str(path), str(images)],
        env=env, capture_output=True, text=True, check=True, timeout=600,
    ).stdout  # fmt: skip
    ms, rss = json.loads(out.strip().splitlines()[-1])
    return float(ms), float(rss)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--images", type=int, default=12, help="images per process (≥ 3)")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    if args.images < 3:
        parser.error("--images must be at least 3 (the first two are not timed)")
    load_at_start = os.getloadavg()[0]
    from model.phantoms.__main__ import write_phantom_study

    with tempfile.TemporaryDirectory(prefix="medrega-buffers-") as scratch:
        study = write_phantom_study("cxr", 2_000_000, Path(scratch))
        path = study.files[0]
        results: dict[str, list[tuple[float, float]]] = {"default": [], "tuned": []}
        for r in range(args.rounds):
            for mode in ("default", "tuned") if r % 2 == 0 else ("tuned", "default"):
                ms, rss = one_process(mode, path, args.images)
                results[mode].append((ms, rss))
                print(f"round {r + 1} {mode:7s} {ms:.1f} ms/image, rss {rss:.0f} MB", flush=True)
    line: dict[str, float] = paired_medians(results, ("ms", "rss_mb"), 1)
    line["ms_ratio"] = ratio(line, "tuned_ms", "default_ms")
    line["rss_ratio"] = ratio(line, "tuned_rss_mb", "default_rss_mb")
    line.update(images=args.images, rounds=args.rounds, load_average=round(load_at_start, 2))
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
