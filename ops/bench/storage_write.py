"""The listener's durable file write, unnamed (O_TMPFILE, then linked) against a named `.part`
temp file (the fallback), alternated in one run on the same filesystem.

    .venv/bin/python -m ops.bench.storage_write [--n 400] [--threads 4] [--rounds 5] [--dir DIR]

Each round writes `--n` instances of 40 KB per thread into one series directory with each mode
(file fsynced, name left to the caller's batched directory fsync, as the listener does), in a
fresh store, and measures wall time and the process's user + system CPU per instance. Last line
JSON: {"unnamed_wall_ms", "named_wall_ms", "unnamed_cpu_ms", "named_cpu_ms", "wall_ratio",
"cpu_ratio", ...}: medians over rounds; ratios are unnamed / named (below 1: unnamed is cheaper).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

from pydicom.uid import generate_uid

from ops.bench.paired import paired_medians, ratio
from services.listener.storage import ContentStore


def one_round(root: Path, unnamed: bool, n: int, threads: int) -> tuple[float, float]:
    """(wall ms, CPU ms) per instance of `threads` × `n` writes with one mode."""
    store = ContentStore(root, min_free_bytes=0)
    if unnamed and not store.unnamed_files:
        raise SystemExit(f"{root}: this filesystem has no O_TMPFILE; nothing to compare")
    store.unnamed_files = unnamed
    data = os.urandom(40_000)
    study, series = generate_uid(), generate_uid()
    uids = [[generate_uid() for _ in range(n)] for _ in range(threads)]
    store.write(study, series, generate_uid(), data)  # the directory exists before timing

    failures: list[BaseException] = []

    def write(batch: list[str]) -> None:
        try:
            for uid in batch:
                store.write(study, series, uid, data, sync_directory=False)
        except BaseException as exc:  # a timing of failed writes is no timing: report it
            failures.append(exc)

    workers = [threading.Thread(target=write, args=(batch,)) for batch in uids]
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if failures:
        raise RuntimeError(f"{len(failures)} writer thread(s) failed") from failures[0]
    count = n * threads
    written = len(list((root / study / series).glob("*.dcm")))
    if written != count + 1:
        raise RuntimeError(f"{written - 1} files written, {count} expected")
    return wall * 1e3 / count, cpu * 1e3 / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=400, help="instances per thread per round")
    parser.add_argument("--threads", type=int, default=4, help="concurrent writers (associations)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: /tmp)")
    args = parser.parse_args(argv)

    results: dict[str, list[tuple[float, float]]] = {"unnamed": [], "named": []}
    for round_number in range(args.rounds):
        for unnamed in (True, False):
            root = Path(tempfile.mkdtemp(prefix="medrega-write-", dir=args.dir))
            try:
                wall, cpu = one_round(root, unnamed, args.n, args.threads)
            finally:
                shutil.rmtree(root, ignore_errors=True)
            mode = "unnamed" if unnamed else "named"
            results[mode].append((wall, cpu))
            print(f"round {round_number + 1} {mode:8s} wall {wall:.3f} ms  cpu {cpu:.3f} ms")

    line: dict[str, float] = {
        "n": args.n * args.threads,
        "threads": args.threads,
        "rounds": args.rounds,
    }
    line.update(paired_medians(results, ("wall_ms", "cpu_ms"), 4))
    line["wall_ratio"] = ratio(line, "unnamed_wall_ms", "named_wall_ms")
    line["cpu_ratio"] = ratio(line, "unnamed_cpu_ms", "named_cpu_ms")
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
