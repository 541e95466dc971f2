"""What ONNX Runtime's spinning pool threads cost the processes beside the worker.

    .venv/bin/python -m ops.bench.ort_spinning [--images 60] [--rounds 4] [--threads N]

A model worker alternates Python work with model runs. With ORT's default
(`session.intra_op.allow_spinning` = 1) the pool threads keep spinning on a core through the
Python part; `shared.inference.onnx_session.create_session` turns that off. Each round runs
`--images` CT slices one per model run, preprocessing each on the same thread (the pattern of a
Locate/Identify click; a CT draft runs batches of 16 and preprocesses on a thread pool, so its
gain per slice is smaller), once with each setting, alternated, while a neighbour process
(standing in for the listener or the web app) counts fixed units of CPU work. Reported per
setting, medians over rounds:
- worker wall ms and worker CPU ms (all its threads) per slice;
- the neighbour's work units per second while the worker runs.
Last line JSON: {"spin_wall_ms", "nospin_wall_ms", "spin_cpu_ms", "nospin_cpu_ms",
"spin_neighbour_units_s", "nospin_neighbour_units_s", "cpu_ratio", "wall_ratio",
"neighbour_ratio", ..., "load_average"}: ratios are no-spin / spin; `load_average` is the
1-minute load when the bench started, before its own work.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ops.bench.paired import paired_medians, ratio
from shared.config import get_settings
from shared.inference.onnx_session import cpu_threads, session_options
from shared.inference.reference_onnx import ReferenceModel


def neighbour(stop: Any, count: Any) -> None:  # an mp.Event and an mp.Value('q')
    """Fixed units of CPU work (hashing 64 KB) until told to stop."""
    block = os.urandom(65536)
    n = 0
    while not stop.is_set():
        for _ in range(20):
            hashlib.sha256(block).digest()
        n += 1
        count.value = n


def session(path: Path, threads: int, spin: bool) -> ReferenceModel:
    options = session_options(threads, spinning=spin)
    return ReferenceModel(
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    )


def ct_slices(n: int) -> list[np.ndarray]:
    """512 × 512 slices in HU: a soft-tissue disc with noise, as a CT series brings."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:512, :512]
    body = ((yy - 256) ** 2 + (xx - 256) ** 2 < 200**2).astype(np.float32)
    return [
        (body * 1040.0 - 1000.0 + rng.normal(0, 12, (512, 512))).astype(np.float32)
        for _ in range(n)
    ]


def one_round(model: ReferenceModel, slices: list[np.ndarray]) -> tuple[float, float, float]:
    """(worker wall ms, worker CPU ms per slice, neighbour units/s) for one pass."""
    stop, count = mp.Event(), mp.Value("q", 0)
    proc = mp.Process(target=neighbour, args=(stop, count), daemon=True)
    proc.start()
    time.sleep(0.3)  # the neighbour is running before the clock starts
    start_units, before = count.value, resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    for pixels in slices:
        batch, _ = model.preprocess(pixels, 40.0, 400.0, "CT")
        model.run_raw(batch[None, None])
    wall = time.perf_counter() - start
    units = count.value - start_units
    if units <= 0:
        raise RuntimeError("the neighbour process did no work: nothing to compare")
    after = resource.getrusage(resource.RUSAGE_SELF)
    stop.set()
    proc.join(5)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall * 1000 / len(slices), cpu * 1000 / len(slices), units / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=cpu_threads(), help="ORT intra-op threads")
    args = ap.parse_args()
    load_at_start = os.getloadavg()[0]
    path = get_settings().model_path
    models = {spin: session(path, args.threads, spin) for spin in (True, False)}
    slices = ct_slices(args.images)
    for model in models.values():  # warm both before timing
        one_round(model, slices[:5])
    results: dict[str, list[tuple[float, float, float]]] = {"spin": [], "nospin": []}
    for r in range(args.rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        for spin in order:
            wall, cpu, units = one_round(models[spin], slices)
            results["spin" if spin else "nospin"].append((wall, cpu, units))
            print(
                f"round {r} spin={int(spin)}: wall {wall:.1f} ms, cpu {cpu:.1f} ms, "
                f"neighbour {units:.0f} units/s",
                flush=True,
            )

    out = paired_medians(results, ("wall_ms", "cpu_ms", "neighbour_units_s"), 2)
    out["wall_ratio"] = ratio(out, "nospin_wall_ms", "spin_wall_ms")
    out["cpu_ratio"] = ratio(out, "nospin_cpu_ms", "spin_cpu_ms")
    out["neighbour_ratio"] = ratio(out, "nospin_neighbour_units_s", "spin_neighbour_units_s")
    out.update(
        threads=args.threads,
        images=args.images,
        rounds=args.rounds,
        load_average=round(load_at_start, 2),
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
