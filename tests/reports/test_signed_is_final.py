"""Invariant: a signed report is final — no model draft supersedes, overwrites or follows it.

Enforced in shared/reports/lifecycle.py, guarded by the `reports_guard` trigger (migration 0003).
The race between a sign-off and a re-draft is forced in both orders with a real lock wait (the
second transaction is seen blocked on the study's lifecycle lock in pg_locks), not with sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import (
    AuditEvent,
    Delivery,
    DeliveryState,
    DraftJob,
    DraftJobState,
    Report,
    Study,
)
from shared.reports import lifecycle
from shared.reports.lifecycle import LifecycleViolation
from tests.reports.world import (
    add_instance,
    job_for_held_images,
    make_study,
    make_user,
    model_result,
    running_job,
    versions,
)
from tests.worker.conftest import wait_for


def _drafted(factory: sessionmaker[Session]) -> int:
    with factory.begin() as session:
        study = make_study(session)
        make_user(session)
        job = running_job(session, study, "first")
        assert lifecycle.store_draft(session, job, model_result()) is not None
        return study.id


def _blocked_on_lifecycle_lock(engine: Engine) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            ).scalar()
        )


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except Exception as exc:  # the test inspects it
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_sign_first_then_the_redraft_is_superseded_and_the_study_flagged(clean_db: Engine) -> None:
    factory = sessionmaker(clean_db, expire_on_commit=False)
    study_id = _drafted(factory)
    with factory.begin() as session:  # late instances: a second job, claimed by a worker
        redraft_job_id = running_job(session, session.get(Study, study_id), "second").id

    signing = factory()
    lifecycle.sign(signing, signing.get(Study, study_id), make_user(signing), base_version=1)

    def store() -> Report | None:
        with factory.begin() as session:
            job = session.get(DraftJob, redraft_job_id, with_for_update=True)
            return lifecycle.store_draft(session, job, model_result())

    thread, outcome = _in_thread(store)
    wait_for(
        lambda: _blocked_on_lifecycle_lock(clean_db), 10, "the re-draft waiting for the sign-off"
    )
    signing.commit()
    signing.close()
    thread.join(10)
    assert outcome == {"value": None}
    with factory() as session:
        assert versions(session, study_id) == [(1, "draft", None), (2, "signed", 1)]
        assert session.get(DraftJob, redraft_job_id).state == DraftJobState.SUPERSEDED
        study = session.get(Study, study_id)
        assert study.state == "signed" and study.new_images_after_signoff
        assert session.scalar(
            select(AuditEvent).where(AuditEvent.action == "new_images_after_signoff")
        )
        # No preliminary message after the final one: v1's unsent P deliveries were cancelled.
        states = {
            (d.report_version, d.result_status, d.state) for d in session.scalars(select(Delivery))
        }
        assert states == {(1, "P", DeliveryState.CANCELLED), (2, "F", DeliveryState.PENDING)}


def test_redraft_first_then_the_stale_sign_off_is_refused(clean_db: Engine) -> None:
    factory = sessionmaker(clean_db, expire_on_commit=False)
    study_id = _drafted(factory)
    drafting = factory()
    job = running_job(drafting, drafting.get(Study, study_id), "second")
    assert lifecycle.store_draft(drafting, job, model_result(abnormal=False)) is not None

    def sign() -> Report:
        with factory.begin() as session:
            return lifecycle.sign(session, session.get(Study, study_id), make_user(session), 1)

    thread, outcome = _in_thread(sign)
    wait_for(
        lambda: _blocked_on_lifecycle_lock(clean_db), 10, "the sign-off waiting for the re-draft"
    )
    drafting.commit()
    drafting.close()
    thread.join(10)
    assert isinstance(outcome.get("error"), LifecycleViolation)
    assert "version 2, not 1" in str(outcome["error"])
    with factory() as session:
        assert versions(session, study_id) == [(1, "superseded", None), (2, "draft", None)]
        assert session.get(Study, study_id).state == "drafted"


def test_a_draft_job_claimed_after_sign_off_writes_nothing(clean_db: Engine) -> None:
    """The code's check: store_draft refuses quietly (job superseded). Without it, the trigger
    below would raise instead, and this test fails."""
    factory = sessionmaker(clean_db, expire_on_commit=False)
    study_id = _drafted(factory)
    with factory.begin() as session:
        lifecycle.sign(session, session.get(Study, study_id), make_user(session), 1)
    with factory.begin() as session:
        job = running_job(session, session.get(Study, study_id), "first-again")
        assert lifecycle.store_draft(session, job, model_result()) is None
        assert job.state == DraftJobState.SUPERSEDED
    with factory() as session:
        assert versions(session, study_id) == [(1, "draft", None), (2, "signed", 1)]


def test_the_database_refuses_a_model_draft_after_sign_off(clean_db: Engine) -> None:
    factory = sessionmaker(clean_db, expire_on_commit=False)
    study_id = _drafted(factory)
    with factory.begin() as session:
        lifecycle.sign(session, session.get(Study, study_id), make_user(session), 1)
    with factory() as session, pytest.raises(IntegrityError, match="no model draft may follow"):
        session.add(Report(study_id=study_id, version=3, status="draft", sentences=[]))
        session.flush()


def test_the_database_refuses_any_change_to_a_signed_version(clean_db: Engine) -> None:
    factory = sessionmaker(clean_db, expire_on_commit=False)
    study_id = _drafted(factory)
    with factory.begin() as session:
        lifecycle.sign(session, session.get(Study, study_id), make_user(session), 1)
    for change in ("status = 'superseded'", "findings_en = 'rewritten'"):
        with factory() as session, pytest.raises(IntegrityError, match="is final"):
            session.execute(text(f"UPDATE reports SET {change} WHERE status = 'signed'"))
    with factory() as session, pytest.raises(IntegrityError, match="immutable"):
        session.execute(text("UPDATE reports SET findings_en = 'x' WHERE status = 'draft'"))


def test_amendment_then_correction_and_no_draft_in_between(clean_db: Engine) -> None:
    factory = sessionmaker(clean_db, expire_on_commit=False)
    study_id = _drafted(factory)
    with factory.begin() as session:
        study, user = session.get(Study, study_id), make_user(session)
        lifecycle.sign(session, study, user, 1)
        version = lifecycle.editable_version(session, study, 2)
        version.sentences[0].en = "Small right pleural effusion."
        lifecycle.new_edited_version(session, study, user, 2, version.findings, version.sentences)
        with pytest.raises(LifecycleViolation):
            lifecycle.check_transition("edited", "draft", final_exists=True, by_model=True)
        corrected = lifecycle.sign(session, study, user, 3)
        assert corrected.status == "corrected"
    with factory() as session:
        assert [v[1] for v in versions(session, study_id)] == [
            "draft",
            "signed",
            "edited",
            "corrected",
        ]


def test_signing_a_draft_that_missed_images_the_study_holds_flags_them(clean_db: Engine) -> None:
    """Images arrived after the draft was made and their re-draft has not landed: the signature
    does not silently cover them (the study is flagged, audited); a draft covering everything
    the study holds is signed without a flag."""
    factory = sessionmaker(clean_db, expire_on_commit=False)
    with factory.begin() as session:
        covered, late = make_study(session), make_study(session)
        for study in (covered, late):
            add_instance(session, study, f"{study.study_instance_uid}.1.1")
            assert lifecycle.store_draft(
                session, job_for_held_images(session, study), model_result()
            )
        add_instance(session, late, f"{late.study_instance_uid}.1.2")  # after its draft
    with factory.begin() as session:
        for study_id in (covered.id, late.id):
            lifecycle.sign(session, session.get(Study, study_id), make_user(session), 1)
    with factory() as session:
        assert not session.get(Study, covered.id).new_images_after_signoff
        assert session.get(Study, late.id).new_images_after_signoff
        event = session.scalar(select(AuditEvent).where(AuditEvent.study_id == late.id))
        assert event is not None and event.action == "new_images_after_signoff"
