"""Image-sized buffers are reused by the model workers, not mapped afresh for every image.

Measured by the page faults themselves, in a fresh process (malloc settings are per process),
with transparent huge pages off for it so that a fault is one 4 KB page on every host: a worker
thread holds two 40 MB float32 arrays at once (a 3000 × 3300 X-ray and a temporary), three
times over; the second and third time must not fault their pages in again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PAGES_PER_IMAGE = (3000 * 3300 * 4) // 4096

PROBE = """
import ctypes, json, resource, sys, threading
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: 4 KB pages, countable
import numpy as np
if sys.argv[1] == "tuned":
    from shared.large_buffers import keep_large_buffers
    assert keep_large_buffers()
faults = []
def images():
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        image = np.full((3000, 3300), 1.0, np.float32)  # touches every page
        temporary = image * 2.0  # two at once: more than one 64 MB thread-arena heap holds
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        del image, temporary
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
    assert min(faults) > PAGES_PER_IMAGE, faults  # both arrays' pages, every time


def test_after_keep_large_buffers_the_second_image_reuses_the_first_ones_pages() -> None:
    faults = _faults("tuned")
    assert faults[0] > PAGES_PER_IMAGE, faults  # the first time is new memory
    assert max(faults[1:]) < PAGES_PER_IMAGE // 10, faults


def test_the_model_workers_apply_it_before_their_threads_start() -> None:
    from celery.signals import worker_init

    from services.worker import celery_app

    receivers = [r() for _, r in worker_init.receivers]
    assert celery_app._keep_large_image_buffers in receivers


class FakeLibc:
    """glibc as far as keep_large_buffers sees it: records each mallopt, refuses `refuse`."""

    gnu_get_libc_version = object()

    def __init__(self, refuse: int | None = None) -> None:
        self.calls: list[int] = []
        self.refuse = refuse
        libc = self

        class Mallopt:
            argtypes: tuple[object, ...] = ()

            def __call__(self, parameter: int, value: int) -> int:
                libc.calls.append(parameter)
                return 0 if parameter == libc.refuse else 1

        self.mallopt = Mallopt()


@pytest.fixture
def libc(monkeypatch: pytest.MonkeyPatch) -> FakeLibc:
    from shared import large_buffers

    fake = FakeLibc()
    for variable in ("GLIBC_TUNABLES", *(v for v, _, _ in large_buffers.SETTINGS)):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(large_buffers.ctypes, "CDLL", lambda _: fake)
    return fake


@pytest.mark.parametrize("variable", ["MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_"])
def test_an_operators_malloc_variable_is_left_alone(
    variable: str, libc: FakeLibc, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared import large_buffers

    monkeypatch.setenv(variable, "2")
    assert large_buffers.keep_large_buffers()
    skipped = {v: p for v, p, _ in large_buffers.SETTINGS}[variable]
    assert skipped not in libc.calls and len(libc.calls) == len(large_buffers.SETTINGS) - 1


def test_malloc_tunables_in_glibc_tunables_leave_everything_alone(
    libc: FakeLibc, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared import large_buffers

    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")
    assert not large_buffers.keep_large_buffers()
    assert libc.calls == []


def test_a_refused_threshold_leaves_the_other_settings_alone(libc: FakeLibc) -> None:
    # An older glibc caps the threshold at 32 MB: the arena and trim settings alone would
    # freeze it at its low start value, worse than the defaults.
    from shared import large_buffers

    libc.refuse = large_buffers.M_MMAP_THRESHOLD
    assert not large_buffers.keep_large_buffers()
    assert libc.calls == [large_buffers.M_MMAP_THRESHOLD]


def test_the_web_app_applies_it_when_it_starts_serving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fastapi.testclient import TestClient

    from services.web import app as web

    calls: list[str] = []

    def record() -> bool:
        calls.append("applied")
        return True

    monkeypatch.setattr(web, "keep_large_buffers", record)
    with TestClient(web.app):
        assert calls == ["applied"]
