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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from shared.config import get_settings
from shared.db.advisory_locks import LockSpace, lock_study, try_advisory_lock
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
    job.timings = {k: round(v, 1) for k, v in timings.items()}
    report = lifecycle.store_draft(session, job, result)
    return report.id if report else None


def run_draft_job(
    engine: Engine, job_id: int, backend: ModelBackend, storage_dir: Path
) -> DraftOutcome:
    factory = sessionmaker(engine, expire_on_commit=False)
    with try_advisory_lock(engine, LockSpace.DRAFT_JOB, job_id) as held:
        if not held:
            return DraftOutcome(job_id, "busy")
        with factory.begin() as session:
            claimed = _claim(session, job_id, storage_dir)
            if claimed is None:
                job = session.get(DraftJob, job_id)
                return DraftOutcome(job_id, job.state if job else "missing")
            _, _, study_input = claimed

        started = time.perf_counter()
        try:
            # Outside the claim's transaction: another node's files may take a while to fetch.
            study_input = localize_study(study_input, instance_reader(storage_dir))
        except InstanceUnavailable as exc:
            with factory.begin() as session:
                state = _defer(session, job_id, str(exc), waiting_for="the images' storage node")
            return DraftOutcome(job_id, state)
        fetch_ms = (time.perf_counter() - started) * 1000.0
        try:
            result = backend.draft(study_input)
        except ModelServerUnavailable as exc:
            with factory.begin() as session:
                state = _defer(session, job_id, str(exc))
            return DraftOutcome(job_id, state)
        except ModelAnswerInvalid as exc:
            with factory.begin() as session:
                state = _fail(session, job_id, f"model answer not usable: {exc}")
            return DraftOutcome(job_id, state)
        timings = dict(result.timings_ms)
        timings["fetch_ms"] = fetch_ms
        timings["total_ms"] = (time.perf_counter() - started) * 1000.0

        with factory.begin() as session:
            report_id = _store_result(session, job_id, result, timings)
            job = session.get(DraftJob, job_id)
            state = job.state if job else "missing"
        log.info("draft job %s: %s (report %s)", job_id, state, report_id)
        return DraftOutcome(job_id, state, report_id)


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
