"""The lanes, for real: RabbitMQ, the relay's own publishing (`relay --once`), and real Celery
worker processes — the draft lane's priorities and the interactive lane's own consumer.

No sleeps decide an order here: the broker does, and the assertions read the jobs' start times
from the database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from amqp.exceptions import NotFound
from kombu import Connection
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import sessionmaker

from model.phantoms.__main__ import write_phantom_study
from model.phantoms.splits import seeds
from services.worker import relay
from services.worker.lanes import delivery_priority, draft_priority, retire_legacy_queue
from shared.config import REPO_ROOT, get_settings
from shared.db.models import DraftJob, DraftJobState, Instance, Study, StudyState
from shared.worker_client import ask_worker
from tests.support.study_rows import draft_job_for, index_files
from tests.support.worker_process import (
    RunningWorker,
    delete_test_queues,
    queue_prefix,
    start_worker,
)

CT_SLICES = 100


def test_priorities_put_critical_studies_and_xrays_before_ct() -> None:
    def priority(count: int, modalities: set[str], critical: bool = False) -> int:
        return draft_priority(instance_count=count, modalities=modalities, critical=critical)

    assert priority(300, {"CT"}, critical=True) > priority(2, {"DX"}) > priority(8, {"CT"})
    assert priority(8, {"CT"}) > priority(120, {"CT"}) > priority(600, {"MR"})
    assert priority(1, {"CR"}) == priority(4, {"CR", "DX"})
    assert priority(2, {"DX", "CT"}) < priority(2, {"DX"})  # not only X-ray: by size
    assert all(0 <= priority(n, {"CT"}) <= 9 for n in (0, 1, 10**6))


@pytest.fixture
def lanes_env(
    clean_db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    prefix = queue_prefix() + "lanes-"
    monkeypatch.setenv("MEDREGA_QUEUE_PREFIX", prefix)
    get_settings.cache_clear()
    env = {"MEDREGA_QUEUE_PREFIX": prefix, "MEDREGA_STORAGE_DIR": str(tmp_path / "storage")}
    yield env
    delete_test_queues(prefix)
    get_settings.cache_clear()


def _write(domain: str, seed: int, out: Path) -> list[Path]:
    slices = CT_SLICES if domain != "cxr" else None
    return write_phantom_study(domain, seed, out, n_slices=slices).files  # type: ignore[arg-type]


def _add_study(
    engine: Engine, storage: Path, files: list[Path], critical: bool = False
) -> tuple[int, int]:
    """Index files as the listener would, with a pending draft job: (job id, first instance)."""
    with sessionmaker(engine).begin() as session:
        study = index_files(session, storage, files)
        study.critical = critical
        job = draft_job_for(session, study)
        instance = session.scalars(select(Instance.id).where(Instance.study_id == study.id)).first()
        assert instance is not None
        return job.id, instance


def _relay_once(env: dict[str, str]) -> None:
    """One pass of the real relay process: publishes every due job with its priority."""
    result = subprocess.run(
        [sys.executable, "-m", "services.worker.relay", "--once"],
        cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def _jobs(engine: Engine) -> dict[int, DraftJob]:
    with sessionmaker(engine, expire_on_commit=False)() as session:
        return {job.id: job for job in session.scalars(select(DraftJob))}


def _started(engine: Engine) -> set[int]:
    return {j for j, job in _jobs(engine).items() if job.started_at}


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.1)


def _queued_messages(queue: str) -> int:
    with Connection(get_settings().broker_url) as connection:
        _, messages, _ = connection.default_channel.queue_declare(queue, passive=True)
        return int(messages)


def test_a_critical_study_and_an_xray_published_after_ct_jobs_are_drafted_before_them(
    clean_db: Engine, lanes_env: dict[str, str], tmp_path: Path
) -> None:
    storage = Path(lanes_env["MEDREGA_STORAGE_DIR"])
    ct_jobs = [
        _add_study(clean_db, storage, _write("chest_ct", seed, tmp_path / "in"))[0]
        for seed in seeds("test", 6, start=30)
    ]
    xray_files = _write("cxr", seeds("test", 1)[0], tmp_path / "in")
    critical_files = _write("chest_ct", seeds("test", 1, start=40)[0], tmp_path / "in")
    # The broker's priorities alone: no X-ray drafted between a CT's slice batches (that has its
    # own test, tests/worker/test_draft_batch.py).
    no_interlude = {**lanes_env, "MEDREGA_DRAFT_XRAY_BATCH": "1"}
    worker = start_worker(no_interlude, tmp_path / "draft.log", queues=("draft",), concurrency=1)
    try:
        _relay_once(lanes_env)  # the CTs: the worker takes one, the others wait in the queue
        _wait(lambda: any(_jobs(clean_db)[j].started_at for j in ct_jobs), 60, "a CT draft")
        xray_job, _ = _add_study(clean_db, storage, xray_files)
        critical_job, _ = _add_study(clean_db, storage, critical_files, critical=True)
        _relay_once(lanes_env)  # the X-ray first, then the critical CT (shortest job first)
        published = datetime.now(UTC)
        waiting = [j for j, job in _jobs(clean_db).items() if j in ct_jobs and not job.started_at]
        assert len(waiting) >= 2, "the CT backlog drained before the X-ray was published"
        _wait(lambda: all(job.finished_at for job in _jobs(clean_db).values()), 300, "all drafts")
    finally:
        worker.stop()
    jobs = _jobs(clean_db)
    assert all(job.state == "done" for job in jobs.values()), {j: jobs[j].state for j in jobs}
    order = sorted(jobs, key=lambda j: jobs[j].started_at or published)
    first = len(ct_jobs) - len(waiting)  # the CT jobs the worker had taken before
    # Both jumped the CT backlog that was already queued …
    assert set(order[first : first + 2]) == {critical_job, xray_job}, worker.log()[-3000:]
    assert set(order[first + 2 :]) == set(waiting)
    # … and when both were waiting together (the model was still busy with a CT after the
    # relay's pass), the critical study went first.
    busy = jobs[order[first - 1]].finished_at
    if busy is not None and busy > published:
        assert order[first : first + 2] == [critical_job, xray_job]


def test_locate_is_answered_while_the_draft_lane_holds_a_backlog(
    clean_db: Engine, lanes_env: dict[str, str], tmp_path: Path
) -> None:
    storage = Path(lanes_env["MEDREGA_STORAGE_DIR"])
    xray_files = _write("cxr", seeds("test", 1)[0], tmp_path / "in")
    _, xray_instance = _add_study(clean_db, storage, xray_files)
    with sessionmaker(clean_db).begin() as session:  # only the CTs are to be drafted
        session.execute(delete(DraftJob))
    ct_jobs = [
        _add_study(clean_db, storage, _write("chest_ct", seed, tmp_path / "in"))[0]
        for seed in seeds("test", 5, start=30)
    ]
    workers: list[RunningWorker] = []
    try:
        workers.append(
            start_worker(lanes_env, tmp_path / "draft.log", queues=("draft",), concurrency=1)
        )
        workers.append(
            start_worker(
                lanes_env, tmp_path / "interactive.log", queues=("interactive",), concurrency=1
            )
        )
        ask_worker("medrega.locate", [xray_instance, 1, "right lung"], 60.0)  # loads the model
        _relay_once(lanes_env)
        _wait(lambda: any(_jobs(clean_db)[j].started_at for j in ct_jobs), 60, "a CT draft")
        # Ask the moment the model worker starts its next CT (a draft takes seconds here).
        taken = _started(clean_db)
        _wait(lambda: len(_started(clean_db) - taken) > 0, 60, "the next CT draft")
        (running,) = _started(clean_db) - taken
        answer = ask_worker("medrega.locate", [xray_instance, 1, "right lung"], 10.0)
        answered = datetime.now(UTC)
        backlog = _queued_messages(lanes_env["MEDREGA_QUEUE_PREFIX"] + "draft")
        unstarted = [j for j, job in _jobs(clean_db).items() if not job.started_at]
        busy_until = _jobs(clean_db)[running].finished_at
    finally:
        for worker in workers:
            worker.stop()
    assert answer["region_code"] == "right_lung"
    # Answered while the draft worker was still busy with the CT it had just taken (not after
    # it, as a worker serving both lanes would), and ahead of the drafts still queued.
    assert busy_until is None or busy_until > answered, (busy_until, answered)
    assert backlog >= 1 and len(unstarted) >= 2, (backlog, unstarted)


def test_the_relay_retires_the_legacy_gpu_queue_and_republishes_queued_jobs(
    clean_db: Engine, lanes_env: dict[str, str]
) -> None:
    legacy = lanes_env["MEDREGA_QUEUE_PREFIX"] + "gpu"
    now = datetime.now(UTC)
    with sessionmaker(clean_db).begin() as session:
        study = Study(study_instance_uid="1.2.3.14", state=StudyState.STABLE)
        session.add(study)
        session.flush()
        job = DraftJob(
            study_id=study.id, instance_set_sha256="0" * 64, instance_count=1,
            state=DraftJobState.QUEUED, published_at=now,
        )  # fmt: skip
        session.add(job)
        session.flush()
        job_id = job.id
    broker = get_settings().broker_url
    with Connection(broker) as connection:
        channel = connection.default_channel
        channel.queue_declare(legacy, durable=True, auto_delete=False)
        channel.basic_publish(channel.prepare_message(b"[[1], {}, {}]"), "", legacy)
        # An old worker still consuming the queue: it is left to drain it.
        with Connection(broker) as old_worker:
            old_worker.default_channel.basic_consume(legacy, callback=lambda message: None)
            relay.retire_legacy_queues(clean_db)
        assert _queued_messages(legacy) == 1  # still there, its message too
    published: list[tuple[str, int]] = []
    relay.relay_once(clean_db, lambda kind, row: published.append((kind, row)), now=now)
    assert published == []  # published just now: not due again for ten minutes
    relay.retire_legacy_queues(clean_db)
    with pytest.raises(NotFound):
        _queued_messages(legacy)
    relay.relay_once(clean_db, lambda kind, row: published.append((kind, row)), now=now)
    assert published == [("draft", job_id)]
    assert retire_legacy_queue(broker, legacy) is None  # gone: nothing to do


def test_deliveries_of_signed_reports_and_orus_go_first() -> None:
    order = [
        delivery_priority(kind=kind, result_status=status)
        for kind, status in (("hl7", "F"), ("sr", "C"), ("hl7", "P"), ("sr", "P"))
    ]
    assert order == sorted(order, reverse=True) and len(set(order)) == 4
    assert all(0 <= p <= 9 for p in order)
