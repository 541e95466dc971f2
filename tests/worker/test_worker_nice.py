"""MEDREGA_WORKER_NICE: a real Celery worker process lowers the CPU priority of every one of its
threads to that nice value at start (the bulk draft worker yields the cores to the interactive one); unset, it
leaves them alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.worker_process import delete_test_queues, queue_prefix, start_worker


def _thread_nices(pid: int) -> list[int]:
    """The nice value of each thread of `pid` (field 19 of /proc/<pid>/task/<tid>/stat)."""
    nices = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the thread ended meanwhile
            continue
        nices.append(int(fields[16]))
    return nices


@pytest.mark.parametrize("nice", [0, 7])
def test_worker_threads_run_at_the_configured_nice(tmp_path: Path, nice: int) -> None:
    prefix = f"{queue_prefix()}nice{nice}-"
    env = {"MEDREGA_QUEUE_PREFIX": prefix, "MEDREGA_WORKER_NICE": str(nice)}
    base = os.getpriority(os.PRIO_PROCESS, 0)
    worker = start_worker(env, tmp_path / "worker.log", queues=("delivery",), concurrency=2)
    try:
        nices = _thread_nices(worker.process.pid)
        assert len(nices) > 1  # Celery's own threads, not only the main one
        assert set(nices) == {max(base, nice)}  # a level, not an increment
    finally:
        worker.stop()
        delete_test_queues(prefix)
