"""Study stability: a study idle for `stable_age_s` gets one durable draft job per instance set.

A study qualifies when it is 'receiving', or when late input marked it `needs_redraft`, and no
new non-own instance arrived for `stable_age_s`, and it has input instances, and it is neither
signed nor has a signed/corrected report (a signed report is final: late images only flag the
study, see indexer.py). The sweep then, in one transaction per batch:
- inserts a `draft_jobs` row (pending) for the sha256 of its sorted non-own SOP Instance UIDs —
  idempotent through the unique (study_id, instance_set_sha256) constraint;
- marks older pending/queued jobs of the study 'superseded' (their instance set is outdated);
- sets the study 'stable', `stable_at`, and clears `needs_redraft`.

An instance's content never changes under its row (a different copy is kept beside it, see
indexer.py), so the same instance set never needs a second job.

Several listener processes (or hosts) may run the sweep: a transaction-level advisory lock lets
one sweep at a time, and `FOR NO KEY UPDATE SKIP LOCKED` keeps the study rows consistent even
without it (NO KEY so that concurrent instance inserts, which take KEY SHARE locks on the study
row through their foreign key, are never blocked by the sweep).

CLI, for tests and operators: `python -m services.listener.study_stability --once`.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

import psycopg

from shared.config import get_settings
from shared.db.instance_sets import instance_set_sha256
from shared.db.models import DraftJobState, ReportStatus, StudyState
from shared.db.outbox import notify_outbox_psycopg
from shared.db.session import libpq_url
from shared.observability.correlation import study_context
from shared.observability.logs import configure_service_logging
from shared.observability.metrics import RECEIVED_TO_STABLE

logger = logging.getLogger(__name__)

# pg_advisory locks take a bigint; this one is "the stability sweep" for the whole database.
SWEEP_LOCK_KEY = int.from_bytes(hashlib.sha256(b"medrega.study_stability").digest()[:8], "big") >> 1
SWEEP_BATCH = 100

_CLAIM_IDLE_STUDIES = """
SELECT s.id FROM studies s
WHERE (s.state = %(receiving)s OR (s.needs_redraft AND s.state <> %(signed)s))
  AND s.last_received_at < now() - make_interval(secs => %(stable_age_s)s)
  AND EXISTS (SELECT 1 FROM instances i JOIN series se ON se.id = i.series_id
              WHERE i.study_id = s.id AND NOT se.is_own_output)
  AND NOT EXISTS (SELECT 1 FROM reports r WHERE r.study_id = s.id
                  AND r.status = ANY(%(final_statuses)s::text[]))
ORDER BY s.last_received_at
LIMIT %(limit)s
FOR NO KEY UPDATE OF s SKIP LOCKED
"""
_INSTANCE_SET = """
SELECT i.sop_instance_uid FROM instances i JOIN series se ON se.id = i.series_id
WHERE i.study_id = %(study_id)s AND NOT se.is_own_output
"""
_INSERT_JOB = """
INSERT INTO draft_jobs (study_id, instance_set_sha256, instance_count, state, attempts, created_at)
VALUES (%(study_id)s, %(sha)s, %(count)s, %(pending)s, 0, now())
ON CONFLICT ON CONSTRAINT uq_draft_jobs_instance_set DO NOTHING
RETURNING id
"""
_EXISTING_JOB = """
SELECT id FROM draft_jobs WHERE study_id = %(study_id)s AND instance_set_sha256 = %(sha)s
"""
_SUPERSEDE_OLDER_JOBS = """
UPDATE draft_jobs SET state = %(superseded)s
WHERE study_id = %(study_id)s AND id <> %(job_id)s AND state IN (%(pending)s, %(queued)s)
"""
# Returns the seconds from the first instance to now when the study was still 'receiving' (its
# first stabilisation: the received → stable stage); a re-draft's stabilisation returns null.
_MARK_STABLE = """
UPDATE studies s
SET state = %(stable)s, stable_at = now(), needs_redraft = false, updated_at = now()
FROM (SELECT id, state FROM studies WHERE id = %(study_id)s) before
WHERE s.id = before.id
RETURNING CASE WHEN before.state = %(receiving)s
               THEN extract(epoch FROM now() - s.first_received_at) END
"""
_FINAL_STATUSES = [ReportStatus.SIGNED.value, ReportStatus.CORRECTED.value]


@dataclass(frozen=True, slots=True)
class DraftJobCreated:
    study_id: int
    draft_job_id: int
    instance_count: int
    instance_set_sha256: str
    received_to_stable_s: float | None = None  # first stabilisation only


def sweep_once(connection: psycopg.Connection[Any], stable_age_s: float) -> list[DraftJobCreated]:
    """One sweep; commits. Returns the jobs created by this sweep."""
    created: list[DraftJobCreated] = []
    with connection.transaction():
        cursor = connection.cursor()
        locked = cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", (SWEEP_LOCK_KEY,))
        row = locked.fetchone()
        if row is None or not row[0]:
            return created  # another process is sweeping right now
        studies = cursor.execute(
            _CLAIM_IDLE_STUDIES,
            {
                "receiving": StudyState.RECEIVING.value,
                "signed": StudyState.SIGNED.value,
                "final_statuses": _FINAL_STATUSES,
                "stable_age_s": stable_age_s,
                "limit": SWEEP_BATCH,
            },
        ).fetchall()
        for (study_id,) in studies:
            job = _stabilise(cursor, study_id)
            if job is not None:
                created.append(job)
        if created:
            notify_outbox_psycopg(cursor)  # wakes the relay on commit
    for job in created:
        if job.received_to_stable_s is not None:
            RECEIVED_TO_STABLE.observe(job.received_to_stable_s)
        with study_context(job.study_id):
            logger.info(
                "study %d stable: draft job %d for %d instances",
                job.study_id,
                job.draft_job_id,
                job.instance_count,
            )
    return created


def _stabilise(cursor: psycopg.Cursor[Any], study_id: int) -> DraftJobCreated | None:
    uids = [r[0] for r in cursor.execute(_INSTANCE_SET, {"study_id": study_id}).fetchall()]
    sha = instance_set_sha256(uids)
    params = {"study_id": study_id, "sha": sha, "count": len(uids)}
    inserted = cursor.execute(
        _INSERT_JOB, {**params, "pending": DraftJobState.PENDING.value}
    ).fetchone()
    job_id: int
    if inserted is not None:
        job_id = int(inserted[0])
    else:
        existing = cursor.execute(_EXISTING_JOB, params).fetchone()
        assert existing is not None
        job_id = int(existing[0])
    cursor.execute(
        _SUPERSEDE_OLDER_JOBS,
        {
            "study_id": study_id,
            "job_id": job_id,
            "superseded": DraftJobState.SUPERSEDED.value,
            "pending": DraftJobState.PENDING.value,
            "queued": DraftJobState.QUEUED.value,
        },
    )
    marked = cursor.execute(
        _MARK_STABLE,
        {
            "study_id": study_id,
            "stable": StudyState.STABLE.value,
            "receiving": StudyState.RECEIVING.value,
        },
    ).fetchone()
    if inserted is None:
        return None
    waited = marked[0] if marked is not None else None
    return DraftJobCreated(
        study_id, job_id, len(uids), sha, float(waited) if waited is not None else None
    )


class StabilitySweeper:
    """A daemon thread running `sweep_once` every `interval_s` on its own connection."""

    def __init__(self, database_url: str, stable_age_s: float, interval_s: float) -> None:
        self._conninfo = libpq_url(database_url)
        self._stable_age_s = stable_age_s
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stability-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        connection: psycopg.Connection[Any] | None = None
        while not self._stopping.wait(self._interval_s):
            try:
                if connection is None or connection.closed:
                    connection = psycopg.connect(
                        self._conninfo, application_name="medrega-stability"
                    )
                sweep_once(connection, self._stable_age_s)
            except Exception:
                # The database may be restarting: log, drop the connection, try next interval.
                logger.exception("stability sweep failed")
                if connection is not None:
                    connection.close()
                    connection = None
        if connection is not None:
            connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Turn idle studies into draft jobs.")
    parser.add_argument("--once", action="store_true", help="sweep once and exit")
    parser.add_argument(
        "--stable-age-s", type=float, default=None, help="override MEDREGA_STABLE_AGE_S"
    )
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_service_logging("stability-sweeper", settings)
    stable_age_s = settings.stable_age_s if args.stable_age_s is None else args.stable_age_s
    if args.once:
        with psycopg.connect(libpq_url(settings.database_url)) as connection:
            jobs = sweep_once(connection, stable_age_s)
        print(f"{len(jobs)} draft job(s) created")
        return 0
    sweeper = StabilitySweeper(
        settings.database_url, stable_age_s, settings.stability_sweep_interval_s
    )
    sweeper.start()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        sweeper.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
