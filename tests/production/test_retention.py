"""Retention on real PostgreSQL rows and real files: old signed studies go, by age or by size;
anything a report still needs stays, whatever the limits say."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from ops.retention import RetentionPolicy, apply_retention, purge_study, storage_usage
from shared.config import REPO_ROOT
from shared.db.models import AuditEvent, Delivery, Instance, Study, User, UserRole
from shared.reports.deliveries import create_deliveries
from shared.reports.lifecycle import editable_version, new_edited_version, sign
from tests.web.factories import make_drafted_study, make_user

DAY_MINUTES = 24 * 60


def _files(engine: Engine, storage: Path, study_id: int) -> list[Path]:
    with Session(engine) as session:
        paths = session.scalars(select(Instance.file_path).where(Instance.study_id == study_id))
        return [storage / p for p in paths]


def _signed(session: Session, storage: Path, work: Path, user: User, seed: int, days: float,
            deliveries: str = "delivered") -> int:  # fmt: skip
    drafted = make_drafted_study(
        session, storage, work, seed=seed, received_minutes_ago=days * DAY_MINUTES
    )
    study = session.get(Study, drafted.study_id)
    assert study is not None
    report = sign(session, study, user, base_version=1)
    session.flush()
    if not session.scalar(select(Delivery.id).where(Delivery.report_id == report.id)):
        create_deliveries(session, report)  # where signing does not queue them itself
        session.flush()
    # The signed version's deliveries claimed (the guard trigger allows no shortcut), then
    # their outcome: all delivered, or the last one still retrying (the study is not finished).
    session.execute(
        text(
            "UPDATE deliveries SET state = 'in_flight', lease_until = now() + interval '1 minute', "
            "attempts = 1 WHERE study_id = :id AND state = 'pending'"
        ),
        {"id": study.id},
    )
    if deliveries == "retrying":
        session.execute(
            text(
                "UPDATE deliveries SET state = 'retrying', last_error = 'RIS down', "
                "error_class = 'transient', next_attempt_at = now() WHERE id = "
                "(SELECT max(id) FROM deliveries WHERE study_id = :id)"
            ),
            {"id": study.id},
        )
    session.execute(
        text(
            "UPDATE deliveries SET state = 'delivered', delivered_at = now() "
            "WHERE study_id = :id AND state = 'in_flight'"
        ),
        {"id": study.id},
    )
    session.commit()
    return study.id


def test_retention_deletes_only_what_no_report_needs(clean_db: Engine, tmp_path: Path) -> None:
    storage, work = tmp_path / "storage", tmp_path / "work"
    with Session(clean_db, expire_on_commit=False) as session:
        user = make_user(session, "li.wei", UserRole.RADIOLOGIST)
        old_done = _signed(session, storage, work, user, seed=1, days=200)
        recent_done = _signed(session, storage, work, user, seed=2, days=1)
        old_retrying = _signed(
            session, storage, work, user, seed=3, days=200, deliveries="retrying"
        )
        old_flagged = _signed(session, storage, work, user, seed=4, days=200)
        session.execute(
            text("UPDATE studies SET new_images_after_signoff = true WHERE id = :id"),
            {"id": old_flagged},
        )
        old_unsigned = make_drafted_study(
            session, storage, work, seed=5, received_minutes_ago=200 * DAY_MINUTES
        ).study_id
        old_amending = _signed(session, storage, work, user, seed=6, days=200)
        study = session.get(Study, old_amending)
        assert study is not None
        # An amendment in progress: the signed version 2 edited again, not yet signed.
        amending = editable_version(session, study, base_version=2)
        new_edited_version(session, study, user, 2, amending.findings, amending.sent_sentences)
        session.commit()
    protected = [old_retrying, old_flagged, old_unsigned, old_amending]
    every = [old_done, recent_done, *protected]
    assert all(p.exists() for s in every for p in _files(clean_db, storage, s))

    # A dry run deletes nothing.
    dry = apply_retention(
        clean_db, storage, RetentionPolicy(max_age=timedelta(days=90)), dry_run=True
    )
    assert dry.purged_study_ids == [old_done]
    assert all(p.exists() for p in _files(clean_db, storage, old_done))

    # By age: only the old, finished study's files go; its rows (the record) stay.
    result = apply_retention(clean_db, storage, RetentionPolicy(max_age=timedelta(days=90)))
    assert result.purged_study_ids == [old_done]
    gone = _files(clean_db, storage, old_done)
    assert gone and not any(p.exists() for p in gone)
    assert not (storage / gone[0].relative_to(storage).parts[0]).exists()  # its directory too
    assert result.files == len(gone) and result.bytes > 0
    first_bytes = result.bytes
    for study_id in [recent_done, *protected]:
        assert all(p.exists() for p in _files(clean_db, storage, study_id))

    # By size: the oldest deletable study goes next (the recent, finished one) ...
    usage = storage_usage(storage)
    result = apply_retention(clean_db, storage, RetentionPolicy(max_storage_bytes=usage - 1))
    assert result.purged_study_ids == [recent_done]
    assert result.storage_bytes_after == storage_usage(storage) < usage
    # ... and no limit, however small, touches what a report still needs.
    result = apply_retention(
        clean_db, storage, RetentionPolicy(max_age=timedelta(0), max_storage_bytes=1),
        now=datetime.now(UTC) + timedelta(days=3650),
    )  # fmt: skip
    assert result.purged_study_ids == [] and result.over_limit
    for study_id in protected:
        assert all(p.exists() for p in _files(clean_db, storage, study_id))
    with Session(clean_db) as session:
        assert session.scalar(select(Study.state).where(Study.id == old_done)) == "signed"
        # Each purge is on the record, once, with what it deleted; a dry run left none.
        purges = session.execute(
            select(AuditEvent.study_id, AuditEvent.username, AuditEvent.details)
            .where(AuditEvent.action == "images_purged")
            .order_by(AuditEvent.id)
        ).all()
    assert [(p.study_id, p.username) for p in purges] == [
        (old_done, "retention"),
        (recent_done, "retention"),
    ]
    assert purges[0].details == {"files": len(gone), "bytes": first_bytes}


def test_the_cli_runs_one_pass_with_the_configured_limits(
    clean_db: Engine, db_url: str, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    env = {**os.environ, "MEDREGA_DATABASE_URL": db_url, "MEDREGA_STORAGE_DIR": str(storage),
           "MEDREGA_RETENTION_MAX_AGE_DAYS": "30"}  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "ops.retention"], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "purged 0 studies, 0 files, 0 bytes" in run.stderr
    check = subprocess.run(
        [sys.executable, "-m", "ops.retention", "--check"], cwd=REPO_ROOT, env=env, timeout=60
    )
    assert check.returncode == 0
    bad = {**env, "MEDREGA_RETENTION_MAX_AGE_DAYS": "-1"}
    refused = subprocess.run(
        [sys.executable, "-m", "ops.retention"], cwd=REPO_ROOT, env=bad,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode != 0 and "retention_max_age_days" in refused.stderr


def test_a_failed_delivery_keeps_the_images_its_retry_reads(
    clean_db: Engine, tmp_path: Path
) -> None:
    """A delivery that ran out of retries waits for an admin's retry, which rebuilds the SR, the
    GSPS and the KOS from the study's files: they stay."""
    storage, work = tmp_path / "storage", tmp_path / "work"
    with Session(clean_db, expire_on_commit=False) as session:
        user = make_user(session, "li.wei", UserRole.RADIOLOGIST)
        failed = _signed(session, storage, work, user, seed=7, days=200, deliveries="retrying")
        session.execute(
            text("UPDATE deliveries SET state = 'failed' WHERE study_id = :id AND state = "
                 "'retrying'"), {"id": failed},
        )  # fmt: skip
        session.commit()
    result = apply_retention(
        clean_db, storage, RetentionPolicy(max_age=timedelta(0), max_storage_bytes=1)
    )
    assert result.purged_study_ids == []
    assert all(p.exists() for p in _files(clean_db, storage, failed))


def test_a_late_image_stored_during_a_purge_is_never_deleted(
    clean_db: Engine, tmp_path: Path
) -> None:
    """The listener takes no lifecycle lock. A batch that raises the study's flag while a purge
    is deciding (its transaction open on the study row) makes the purge wait and then keep the
    study: no file goes whose study is no longer deletable."""
    storage, work = tmp_path / "storage", tmp_path / "work"
    with Session(clean_db, expire_on_commit=False) as session:
        user = make_user(session, "li.wei", UserRole.RADIOLOGIST)
        study_id = _signed(session, storage, work, user, seed=8, days=200)
    listener = Session(clean_db)
    listener.begin()
    # What the listener's batch does for an image arriving after sign-off (indexer.py).
    listener.execute(
        text("UPDATE studies SET new_images_after_signoff = true WHERE id = :id"), {"id": study_id}
    )
    outcome: list[object] = []

    def purge() -> None:
        with Session(clean_db) as session, session.begin():
            outcome.append(purge_study(session, storage, study_id))

    worker = threading.Thread(target=purge)
    worker.start()
    # The barrier: the purge's backend is waiting for the listener's row lock.
    with clean_db.connect() as probe:
        for _ in range(200):
            waiting = probe.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                     "AND datname = current_database()")
            ).scalar()  # fmt: skip
            if waiting or not worker.is_alive():
                break
            time.sleep(0.05)
    assert worker.is_alive(), f"the purge did not wait for the listener's batch: {outcome}"
    listener.commit()
    listener.close()
    worker.join(timeout=30)
    assert outcome == [(0, 0)]
    assert all(p.exists() for p in _files(clean_db, storage, study_id))


def test_the_hourly_service_outlives_a_database_that_is_down(tmp_path: Path) -> None:
    """With `--every`, a failed pass (here: nothing listens where the database should be) is
    logged and the next one comes; one pass alone exits 1."""
    storage = tmp_path / "storage"
    storage.mkdir()
    env = {**os.environ, "MEDREGA_STORAGE_DIR": str(storage), "MEDREGA_RETENTION_MAX_AGE_DAYS": "30",
           "MEDREGA_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"}  # fmt: skip
    once = subprocess.run(
        [sys.executable, "-m", "ops.retention"], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert once.returncode == 1 and "retention pass failed" in once.stderr
    service = subprocess.Popen(
        [sys.executable, "-m", "ops.retention", "--every", "1"], cwd=REPO_ROOT, env=env,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert service.stderr is not None
        failures = 0
        for line in service.stderr:  # blocks until the service writes; ends if it exits
            failures += "retention pass failed" in line
            if failures == 3:
                break
        assert failures == 3 and service.poll() is None
    finally:
        service.kill()
        service.wait(timeout=30)


def test_a_dry_run_with_both_limits_reports_what_a_real_pass_deletes(
    clean_db: Engine, tmp_path: Path
) -> None:
    storage, work = tmp_path / "storage", tmp_path / "work"
    with Session(clean_db, expire_on_commit=False) as session:
        user = make_user(session, "li.wei", UserRole.RADIOLOGIST)
        old = _signed(session, storage, work, user, seed=9, days=200)
        recent = _signed(session, storage, work, user, seed=10, days=1)
    old_bytes = sum(p.stat().st_size for p in _files(clean_db, storage, old))
    # The size cap is met once the age limit has freed the old study: the recent one stays.
    policy = RetentionPolicy(
        max_age=timedelta(days=90), max_storage_bytes=storage_usage(storage) - old_bytes
    )
    dry = apply_retention(clean_db, storage, policy, dry_run=True)
    real = apply_retention(clean_db, storage, policy)
    assert dry.purged_study_ids == real.purged_study_ids == [old]
    assert (dry.files, dry.bytes) == (real.files, real.bytes) and dry.bytes == old_bytes
    assert dry.storage_bytes_after == real.storage_bytes_after and not dry.over_limit
    assert all(p.exists() for p in _files(clean_db, storage, recent))
