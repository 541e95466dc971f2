"""Image-sized buffers are reused by the model workers, not mapped afresh for every image.

Measured by the page faults themselves, in a fresh process (malloc settings are per process):
a worker thread allocates and fills a 40 MB float32 array (a 3000 × 3300 X-ray) three times; the
second and third fill must not fault its pages in again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# Fresh memory faults in page by page (fewer faults where the kernel hands out huge pages).
FRESH_FAULTS_MIN = 100

PROBE = """
import json, resource, sys, threading
import numpy as np
if sys.argv[1] == "tuned":
    from shared.large_buffers import keep_large_buffers
    assert keep_large_buffers()
faults = []
def images():
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        image = np.full((3000, 3300), 1.0, np.float32)  # touches every page
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        del image
worker = threading.Thread(target=images)  # as in the worker's thread pool
worker.start()
worker.join()
print(json.dumps(faults))
"""

CLEAN_ENV = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)}  # no MALLOC_* of our own


def _faults(mode: str) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        cwd=REPO_ROOT, env=CLEAN_ENV, capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    return list(json.loads(out.strip().splitlines()[-1]))


def test_the_probe_sees_a_fresh_mapping_per_image_by_default() -> None:
    # The control: without the settings every 40 MB image faults its pages in again, so the
    # test below can tell the difference.
    faults = _faults("default")
    assert min(faults) > FRESH_FAULTS_MIN, faults


def test_after_keep_large_buffers_the_second_image_reuses_the_first_ones_pages() -> None:
    faults = _faults("tuned")
    assert faults[0] > FRESH_FAULTS_MIN, faults  # the first one is new memory
    assert max(faults[1:]) < faults[0] // 10, faults


def test_the_model_workers_apply_it_before_their_threads_start() -> None:
    from celery.signals import worker_init

    from services.worker import celery_app

    receivers = [r() for _, r in worker_init.receivers]
    assert celery_app._keep_large_image_buffers in receivers


@pytest.mark.parametrize("variable", ["MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_"])
def test_an_operators_malloc_variable_is_left_alone(
    variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared import large_buffers

    calls: list[int] = []

    class FakeMallopt:
        argtypes: tuple[object, ...] = ()

        def __call__(self, parameter: int, value: int) -> int:
            calls.append(parameter)
            return 1

    class FakeLibc:
        gnu_get_libc_version = object()
        mallopt = FakeMallopt()

    monkeypatch.setenv(variable, "2")
    monkeypatch.setattr(large_buffers.ctypes, "CDLL", lambda _: FakeLibc())
    assert large_buffers.keep_large_buffers()
    skipped = {v: p for v, p, _ in large_buffers.SETTINGS}[variable]
    assert skipped not in calls and len(calls) == len(large_buffers.SETTINGS) - 1
