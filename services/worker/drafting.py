"""The draft task's body: claim a draft job, run the model, store the draft in one transaction.

Exactly-once drafting per instance set rests on three things:
- a PostgreSQL advisory lock per job, held for the whole run, so two workers never draft the
  same job at once, and a killed worker's lock disappears with its connection;
- the job's state, re-checked under `SELECT … FOR UPDATE` in the final transaction, so a job is
  written at most once even if its message is delivered twice;
- the instance set, re-computed at the start: if the study grew since the job was made, the job
  is superseded (the listener makes a new one for the new set).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, cast

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from services.worker.lanes import is_xray_job, waiting_xray_jobs
from shared.config import get_settings
from shared.db.advisory_locks import (
    LockSpace,
    lock_study,
    try_advisory_lock,
    try_lock_on,
    unlock_on,
)
from shared.db.instance_inputs import instance_input
from shared.db.instance_sets import instance_set_sha256
from shared.db.models import (
    DraftJob,
    DraftJobState,
    Instance,
    Series,
    Study,
    StudyState,
)
from shared.delivery_policy import RetryPolicy, after_failure
from shared.inference.backend import (
    ModelAnswerInvalid,
    ModelBackend,
    ModelServerUnavailable,
    StudyInput,
)
from shared.reports import lifecycle
from shared.reports.domain import DraftResult
from shared.storage.instance_reader import instance_reader, localize_study
from shared.storage.refs import InstanceUnavailable

log = logging.getLogger(__name__)

FINISHED_JOB_STATES = {
    DraftJobState.DONE,
    DraftJobState.NOT_APPLICABLE,
    DraftJobState.SUPERSEDED,
    DraftJobState.FAILED,
}


@dataclass(frozen=True)
class DraftOutcome:
    job_id: int
    state: str  # the job's state after this run, or "busy" when another worker holds it
    report_id: int | None = None


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _study_input(session: Session, study: Study, storage_dir: Path) -> StudyInput:
    rows = session.execute(
        select(Instance, Series)
        .join(Series, Instance.series_id == Series.id)
        .where(Instance.study_id == study.id, Series.is_own_output.is_(False))
        .order_by(Series.series_number, Instance.instance_number, Instance.id)
    ).all()
    return StudyInput(
        study_instance_uid=study.study_instance_uid,
        instances=[instance_input(instance, series, storage_dir) for instance, series in rows],
    )


def _claim(
    session: Session, job_id: int, storage_dir: Path
) -> tuple[DraftJob, Study, StudyInput] | None:
    """Move the job to 'running' unless it is finished or stale; None when there is nothing to do."""
    job = session.get(DraftJob, job_id, with_for_update=True)
    if job is None:
        raise LookupError(f"draft job {job_id} does not exist")
    if job.state in FINISHED_JOB_STATES:
        return None
    lock_study(session, job.study_id)  # before the study row: one lock order everywhere
    study = session.get(Study, job.study_id, with_for_update=True)
    assert study is not None
    if lifecycle.final_exists(session, study.id):
        # A signed report is never replaced by the model; late images are the radiologist's call.
        lifecycle.drop_job_after_signoff(session, job, study, "study already signed")
        return None
    study_input = _study_input(session, study, storage_dir)
    current_set = instance_set_sha256(i.sop_instance_uid for i in study_input.instances)
    if current_set != job.instance_set_sha256:
        # The study grew after this job was made; the listener's next job covers the new set.
        _finish(job, DraftJobState.SUPERSEDED, "newer instances arrived")
        return None
    job.state = DraftJobState.RUNNING
    job.attempts += 1
    job.started_at = datetime.now(UTC)
    job.worker = worker_name()
    study.state = StudyState.DRAFTING
    return job, study, study_input


def _finish(job: DraftJob, state: DraftJobState, reason: str) -> None:
    job.state = state
    job.reason = reason
    job.finished_at = datetime.now(UTC)


def _store_result(
    session: Session, job_id: int, result: DraftResult, timings: dict[str, float]
) -> int | None:
    """The one transaction: the draft version with its findings and deliveries (the lifecycle
    decides whether it may be written at all), or 'not applicable'."""
    job = session.get(DraftJob, job_id, with_for_update=True)
    assert job is not None
    if job.state != DraftJobState.RUNNING:  # someone else finished or superseded it meanwhile
        return None
    started = time.perf_counter()
    report = lifecycle.store_draft(session, job, result)
    session.flush()
    timings["store_ms"] = (time.perf_counter() - started) * 1000.0  # without the commit
    job.timings = {k: round(v, 1) for k, v in timings.items()}
    return report.id if report else None


class BatchBackend(Protocol):
    """A backend that drafts several studies in one pass, answering each as soon as it is done
    (the onnx backend)."""

    def draft_iter(
        self,
        studies: Sequence[StudyInput],
        *,
        between_batches: Callable[[], None] | None = None,
    ) -> Iterator[DraftResult | Exception]: ...


@dataclass(frozen=True)
class _Claimed:
    job_id: int
    study_input: StudyInput
    claim_ms: float


def run_draft_job(
    engine: Engine, job_id: int, backend: ModelBackend, storage_dir: Path, *, batch_max: int = 1
) -> DraftOutcome:
    """Draft one job. An X-ray job takes with it up to `batch_max - 1` other X-ray jobs waiting
    in the lane (each claimed under its own advisory lock, exactly as its own message would
    claim it; their messages later find them done): a burst's X-rays in one task instead of one
    each, the next ones read while the model and the database work on the current one. Each
    job's draft is stored in its own transaction as soon as the model is done with it. Any
    other job (CT, MR) lets the X-ray jobs that arrive while it runs be drafted between its
    slice batches (`_xray_interlude`). `batch_max` 1: neither."""
    factory = sessionmaker(engine, expire_on_commit=False)
    claiming = time.perf_counter()
    with ExitStack() as held_locks:
        if not held_locks.enter_context(try_advisory_lock(engine, LockSpace.DRAFT_JOB, job_id)):
            return DraftOutcome(job_id, "busy")
        with factory.begin() as session:
            claimed = _claim(session, job_id, storage_dir)
            if claimed is None:
                job = session.get(DraftJob, job_id)
                return DraftOutcome(job_id, job.state if job else "missing")
            batch = [_Claimed(job_id, claimed[2], (time.perf_counter() - claiming) * 1000.0)]
        interlude: Callable[[], None] | None = None
        if batch_max > 1 and hasattr(backend, "draft_iter"):
            with factory() as session:
                xray = is_xray_job(session, job_id)
            if xray:
                batch += _claim_companions(
                    engine, factory, held_locks, job_id, batch_max - 1, storage_dir
                )
            else:
                interlude = _xray_interlude(engine, backend, storage_dir, batch_max, job_id)
        outcomes = _draft_claimed(factory, backend, batch, storage_dir, interlude)
    return outcomes[0]


def _xray_interlude(
    engine: Engine, backend: ModelBackend, storage_dir: Path, batch_max: int, job_id: int
) -> Callable[[], None]:
    """For a CT/MR draft: called between two of its slice batches, it drafts the X-ray jobs
    that arrived meanwhile (one with its companions, exactly as their own messages would), so
    an X-ray waits for one batch of slices instead of the whole series. The series' own job
    keeps its lock and its claim; nothing it holds is touched."""
    running = False

    def interlude() -> None:
        nonlocal running
        if running:
            return
        running = True
        try:
            with sessionmaker(engine)() as session:
                waiting = waiting_xray_jobs(session, exclude=job_id, limit=1)
            if waiting:
                log.info("draft job %s pauses for X-ray job %s", job_id, waiting[0])
                run_draft_job(engine, waiting[0], backend, storage_dir, batch_max=batch_max)
        except Exception:
            # Never at the series' expense: the X-ray job is left running without its lock,
            # and the relay publishes it again (its own task records any failure).
            log.exception("X-ray drafts between the batches of draft job %s failed", job_id)
        finally:
            running = False

    return interlude


def _claim_companions(
    engine: Engine,
    factory: sessionmaker[Session],
    held_locks: ExitStack,
    job_id: int,
    limit: int,
    storage_dir: Path,
) -> list[_Claimed]:
    """Claim up to `limit` waiting X-ray jobs; their advisory locks (on one connection) are held
    until `held_locks` closes. A job another worker holds, or one no longer waiting, is skipped."""
    with factory() as session:
        candidates = waiting_xray_jobs(session, exclude=job_id, limit=2 * limit)
    if not candidates:
        return []
    connection = held_locks.enter_context(engine.connect())
    claimed: list[_Claimed] = []
    for candidate in candidates:
        if len(claimed) >= limit:
            break
        claiming = time.perf_counter()
        if not try_lock_on(connection, LockSpace.DRAFT_JOB, candidate):
            continue
        held_locks.callback(unlock_on, connection, LockSpace.DRAFT_JOB, candidate)
        try:
            with factory.begin() as session:
                got = _claim(session, candidate, storage_dir)
        except LookupError:
            continue  # deleted meanwhile
        if got is not None:
            claimed.append(_Claimed(candidate, got[2], (time.perf_counter() - claiming) * 1000.0))
    if claimed:
        log.info(
            "draft job %s takes waiting X-ray jobs %s with it", job_id, [c.job_id for c in claimed]
        )
    return claimed


def _model_results(
    backend: ModelBackend,
    studies: list[StudyInput],
    between_batches: Callable[[], None] | None = None,
) -> Iterator[DraftResult | Exception]:
    """Each study's draft (or the exception that belongs to it), in order, as each is done."""
    if len(studies) > 1 or between_batches is not None:
        yield from cast(BatchBackend, backend).draft_iter(studies, between_batches=between_batches)
        return
    try:
        yield backend.draft(studies[0])
    except (ModelServerUnavailable, ModelAnswerInvalid) as exc:
        yield exc


def _draft_claimed(
    factory: sessionmaker[Session],
    backend: ModelBackend,
    batch: list[_Claimed],
    storage_dir: Path,
    between_batches: Callable[[], None] | None = None,
) -> list[DraftOutcome]:
    """Run the model on claimed jobs and record each outcome in its own transaction; the
    outcomes in `batch` order. An unexpected error of the first job (the task's own) is raised
    after the others are stored; a companion's is recorded as its failure."""
    started = time.perf_counter()
    outcomes: dict[int, DraftOutcome] = {}
    ready: list[_Claimed] = []
    for claimed in batch:
        try:
            # Outside the claim's transaction: another node's files may take a while to fetch.
            localized = localize_study(claimed.study_input, instance_reader(storage_dir))
        except InstanceUnavailable as exc:
            with factory.begin() as session:
                state = _defer(
                    session, claimed.job_id, str(exc), waiting_for="the images' storage node"
                )
            outcomes[claimed.job_id] = DraftOutcome(claimed.job_id, state)
            continue
        ready.append(_Claimed(claimed.job_id, localized, claimed.claim_ms))
    fetch_ms = (time.perf_counter() - started) * 1000.0
    studies = [c.study_input for c in ready]
    results = _model_results(backend, studies, between_batches) if ready else iter(())
    own_error: Exception | None = None
    # Each draft is stored as soon as the model is done with it (the next study is being read
    # meanwhile), not after the whole batch.
    for claimed, result in zip(ready, results, strict=True):
        total_ms = (time.perf_counter() - started) * 1000.0
        job_id = claimed.job_id
        if isinstance(result, ModelServerUnavailable):
            with factory.begin() as session:
                outcomes[job_id] = DraftOutcome(job_id, _defer(session, job_id, str(result)))
            continue
        if isinstance(result, ModelAnswerInvalid):
            with factory.begin() as session:
                state = _fail(session, job_id, f"model answer not usable: {result}")
            outcomes[job_id] = DraftOutcome(job_id, state)
            continue
        if isinstance(result, Exception):
            if job_id == batch[0].job_id:
                own_error = result  # the task records it and logs the traceback
                continue
            log.error("draft job %s failed", job_id, exc_info=result)
            with factory.begin() as session:
                state = _fail(session, job_id, f"{type(result).__name__}: {result}")
            outcomes[job_id] = DraftOutcome(job_id, state)
            continue
        timings = dict(result.timings_ms)
        timings["fetch_ms"] = fetch_ms
        timings["claim_ms"] = claimed.claim_ms  # the job's lock and claim, before `started_at`
        timings["total_ms"] = total_ms
        timings["batch"] = float(len(ready))
        with factory.begin() as session:
            report_id = _store_result(session, job_id, result, timings)
            job = session.get(DraftJob, job_id)
            state = job.state if job else "missing"
        log.info("draft job %s: %s (report %s)", job_id, state, report_id)
        outcomes[job_id] = DraftOutcome(job_id, state, report_id)
    if own_error is not None:
        raise own_error
    return [outcomes[c.job_id] for c in batch]


def draft_retry_policy() -> RetryPolicy:
    """Backoff while the model server is unreachable: the deliveries' policy (exponential, full
    jitter, so jobs deferred together don't all return at once), with the draft settings."""
    settings = get_settings()
    return RetryPolicy(
        base_s=settings.draft_retry_base_s,
        cap_s=max(settings.draft_retry_max_s, settings.draft_retry_base_s),
        max_attempts=settings.draft_max_attempts,
    )


def _defer(session: Session, job_id: int, error: str, waiting_for: str = "the model server") -> str:
    """The model server (or the node holding the images) is unreachable: the job waits
    (durably, on its row) and the relay publishes it again at `next_attempt_at`; after
    `draft_max_attempts` it fails."""
    job = session.get(DraftJob, job_id, with_for_update=True)
    if job is None or job.state != DraftJobState.RUNNING:
        return job.state if job else "missing"
    policy = draft_retry_policy()
    now = datetime.now(UTC)
    decision = after_failure(job.attempts, transient=True, now=now, policy=policy)
    if decision.next_attempt_at is None:
        return _fail(
            session,
            job_id,
            f"{waiting_for.removeprefix('the ')} unavailable after {job.attempts} attempts: {error}",
        )
    delay = (decision.next_attempt_at - now).total_seconds()
    job.state = DraftJobState.PENDING
    job.next_attempt_at = decision.next_attempt_at
    job.reason = (
        f"waiting for {waiting_for} (attempt {job.attempts} of {policy.max_attempts}, "
        f"next in {delay:.0f} s): {error}"
    )[:2000]
    log.warning("draft job %s: %s unavailable; next attempt in %.0f s", job_id, waiting_for, delay)
    return job.state


def _fail(session: Session, job_id: int, reason: str) -> str:
    job = session.get(DraftJob, job_id, with_for_update=True)
    if job is None or job.state in FINISHED_JOB_STATES:
        return job.state if job else "missing"
    _finish(job, DraftJobState.FAILED, reason[:2000])
    study = session.get(Study, job.study_id, with_for_update=True)
    if study is not None and study.state != StudyState.SIGNED:
        study.state = StudyState.FAILED
    log.warning("draft job %s failed: %s", job_id, reason[:200])
    return job.state


def mark_failed(engine: Engine, job_id: int, reason: str) -> None:
    """Record a permanent failure (bad input that isn't 'not applicable', a bug) on the job."""
    with sessionmaker(engine, expire_on_commit=False).begin() as session:
        _fail(session, job_id, reason)
