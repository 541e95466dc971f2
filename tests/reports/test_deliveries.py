"""Invariants: messages for one study never go backwards, and no delivery is ever stuck.

Rules in shared/reports/deliveries.py (claim, order_check, record_outcome), guarded by the
`deliveries_guard` trigger and CHECK constraints of migration 0003. Sends go to a real MLLP peer
(ops/ris_sink.py); faults are real (a missing file, a refused connection, a lease run out).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ops.ris_sink import RisSink, SinkBehaviour
from services.worker.delivery import attempt_delivery
from services.worker.relay import relay_once
from shared.config import get_settings
from shared.db.models import Delivery, DeliveryState, Instance, Series, Study
from shared.reports import deliveries, lifecycle
from tests.reports.world import make_study, make_user, model_result, running_job


@pytest.fixture
def factory(clean_db: Engine) -> sessionmaker[Session]:
    return sessionmaker(clean_db, expire_on_commit=False)


def _draft(factory: sessionmaker[Session], study_id: int | None = None, tag: str = "first") -> int:
    with factory.begin() as session:
        study = session.get(Study, study_id) if study_id else make_study(session)
        make_user(session)
        job = running_job(session, study, tag)
        assert lifecycle.store_draft(session, job, model_result()) is not None
        return study.id


def _sign(factory: sessionmaker[Session], study_id: int, base_version: int) -> None:
    with factory.begin() as session:
        lifecycle.sign(session, session.get(Study, study_id), make_user(session), base_version)


def _amend_and_sign(factory: sessionmaker[Session], study_id: int) -> None:
    """Edit the signed version 2 and sign the correction (version 3)."""
    with factory.begin() as session:
        study, user = session.get(Study, study_id), make_user(session)
        version = lifecycle.editable_version(session, study, 2)
        lifecycle.new_edited_version(session, study, user, 2, version.findings, version.sentences)
        lifecycle.sign(session, study, user, 3)


def _rows(factory: sessionmaker[Session], kind: str = "hl7") -> list[Delivery]:
    with factory() as session:
        return list(
            session.scalars(select(Delivery).where(Delivery.kind == kind).order_by(Delivery.id))
        )


def _claim(factory: sessionmaker[Session], delivery_id: int) -> str:
    with factory.begin() as session:
        return deliveries.claim(session, delivery_id, datetime.now(UTC))


def _delivered(factory: sessionmaker[Session], delivery_id: int) -> None:
    assert _claim(factory, delivery_id) == "claimed"
    with factory.begin() as session:
        deliveries.record_outcome(session, delivery_id, datetime.now(UTC), ack_code="AA")


def test_a_final_report_cancels_the_unsent_preliminary_and_never_follows_it(factory) -> None:
    study_id = _draft(factory)
    _sign(factory, study_id, 1)
    p, f = _rows(factory)
    assert (p.result_status, p.state) == ("P", DeliveryState.CANCELLED)
    assert "superseded by version 2" in (p.last_error or "")
    assert _claim(factory, p.id) == "cancelled"
    assert _claim(factory, f.id) == "claimed"


def test_a_preliminary_that_failed_in_flight_never_goes_after_the_final(factory) -> None:
    """The draft's ORU is on the wire when the radiologist signs; its attempt then fails. The code
    cancels it at its next claim; the trigger refuses to let it go regardless."""
    study_id = _draft(factory)
    (p,) = _rows(factory)
    assert _claim(factory, p.id) == "claimed"
    _sign(factory, study_id, 1)
    with factory.begin() as session:
        deliveries.record_outcome(session, p.id, datetime.now(UTC), error=TimeoutError("no ACK"))
    p, f = _rows(factory)
    assert (p.state, f.result_status) == (DeliveryState.RETRYING, "F")
    with (
        factory() as session,
        pytest.raises(IntegrityError, match="preliminary result after a final"),
    ):
        session.execute(
            update(Delivery)
            .where(Delivery.id == p.id)
            .values(state="in_flight", lease_until=datetime.now(UTC))
        )
    assert _claim(factory, p.id) == "cancelled"
    assert "final report supersedes" in (_rows(factory)[0].last_error or "")


def test_a_correction_waits_for_the_final_and_the_database_agrees(factory) -> None:
    study_id = _draft(factory)
    _sign(factory, study_id, 1)
    _amend_and_sign(factory, study_id)
    _, f, c = _rows(factory)
    assert (f.result_status, c.result_status) == ("F", "C")
    assert _claim(factory, c.id) == "waiting"
    with factory() as session, pytest.raises(IntegrityError, match="correction before any final"):
        session.execute(
            update(Delivery)
            .where(Delivery.id == c.id)
            .values(state="in_flight", lease_until=datetime.now(UTC))
        )
    _delivered(factory, f.id)
    assert _claim(factory, c.id) == "claimed"


def test_a_newer_version_waits_while_an_older_one_is_in_flight(factory) -> None:
    study_id = _draft(factory)
    (v1,) = _rows(factory)
    assert _claim(factory, v1.id) == "claimed"  # on the wire when the re-draft lands
    _draft(factory, study_id, "second")
    _, v2 = _rows(factory)
    assert _rows(factory)[0].state == DeliveryState.IN_FLIGHT  # not cancelled mid-send
    assert _claim(factory, v2.id) == "waiting"
    with factory() as session, pytest.raises(IntegrityError, match="out of order"):
        session.execute(
            update(Delivery)
            .where(Delivery.id == v2.id)
            .values(state="in_flight", lease_until=datetime.now(UTC))
        )
    with factory.begin() as session:
        deliveries.record_outcome(session, v1.id, datetime.now(UTC), ack_code="AA")
    assert _claim(factory, v2.id) == "claimed"


@pytest.fixture
def ris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[callable]:
    sinks: list[RisSink] = []

    def start(reply: str = "AA", policy: str | None = None) -> RisSink:
        sink = RisSink(tmp_path / f"ris{len(sinks)}", behaviour=SinkBehaviour(reply=reply)).start()
        sinks.append(sink)
        monkeypatch.setenv("MEDREGA_RIS_PORT", str(sink.port))
        if policy is not None:
            monkeypatch.setenv("MEDREGA_RIS_ACK_POLICY", policy)
        get_settings.cache_clear()
        return sink

    yield start
    for sink in sinks:
        sink.stop()
    get_settings.cache_clear()


@pytest.mark.parametrize(("policy", "state"), [(None, "retrying"), ("AR=fail", "failed")])
def test_what_an_ar_means_is_the_ris_policy(factory, clean_db, ris, policy, state) -> None:
    sink = ris(reply="AR", policy=policy)
    _draft(factory)
    (oru,) = _rows(factory)
    assert attempt_delivery(clean_db, oru.id) == state
    (oru,) = _rows(factory)
    assert oru.ack_code == "AR" and oru.attempts == 1 and sink.received == 1
    assert oru.error_class == ("transient" if policy is None else "permanent")
    assert oru.last_error and oru.delivered_at is None


def test_negative_acks_are_retried_a_bounded_number_of_times(factory, clean_db, ris) -> None:
    ris(reply="AE")
    _draft(factory)
    (oru,) = _rows(factory)
    states = []
    for _ in range(get_settings().ris_ack_max_attempts):
        with factory.begin() as session:  # its backoff has passed
            session.execute(
                update(Delivery)
                .where(Delivery.id == oru.id)
                .values(next_attempt_at=datetime.now(UTC))
            )
        states.append(attempt_delivery(clean_db, oru.id))
    assert states == ["retrying"] * (len(states) - 1) + ["failed"]


def test_only_an_aa_naming_our_message_is_delivered(factory, clean_db, ris) -> None:
    sink = ris(reply="AA")
    _draft(factory)
    (oru,) = _rows(factory)
    assert attempt_delivery(clean_db, oru.id) == "delivered"
    assert (sink.out_dir / f"{oru.message_id}.hl7").exists()


def test_an_unexpected_error_is_recorded_not_left_in_flight(factory, clean_db, tmp_path) -> None:
    """The SR's source image row exists but its file is gone: FileNotFoundError mid-attempt."""
    study_id = _draft(factory)
    with factory.begin() as session:
        series = Series(study_id=study_id, series_instance_uid="1.2.3.999", modality="DX")
        session.add(series)
        session.flush()
        session.add(
            Instance(series_id=series.id, study_id=study_id, file_path="gone/missing.dcm",
                     sop_instance_uid="1.2.826.0.1.3680043.8.498.99.1000",
                     sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", transfer_syntax_uid="1.2.840.10008.1.2.1",
                     size_bytes=1, sha256="0" * 64)
        )  # fmt: skip
    (sr,) = _rows(factory, "sr")
    assert attempt_delivery(clean_db, sr.id) == "retrying"
    (sr,) = _rows(factory, "sr")
    assert sr.attempts == 1 and sr.error_class == "transient" and sr.lease_until is None
    assert "FileNotFoundError" in (sr.last_error or "")


def test_a_dead_workers_lease_is_taken_back_and_counted(factory, clean_db) -> None:
    _draft(factory)
    (oru,) = _rows(factory)
    assert _claim(factory, oru.id) == "claimed"  # ...and the worker is SIGKILLed here
    with factory.begin() as session:
        session.execute(
            update(Delivery).where(Delivery.id == oru.id)
            .values(lease_until=datetime.now(UTC) - timedelta(seconds=1))
        )  # fmt: skip
    relay_once(clean_db, lambda kind, row: None)
    (oru,) = _rows(factory)
    assert oru.state == DeliveryState.RETRYING and oru.attempts == 1
    assert "abandoned" in (oru.last_error or "") and oru.next_attempt_at is not None


def test_the_database_refuses_an_unrecorded_failure_or_a_lease_less_attempt(factory) -> None:
    _draft(factory)
    (oru,) = _rows(factory)
    for values, name in (
        ({"state": "failed"}, "failure_recorded"),
        ({"state": "in_flight"}, "in_flight_has_lease"),
        ({"state": "retrying", "last_error": "x"}, "retry_scheduled"),
    ):
        with factory() as session, pytest.raises(IntegrityError, match=name):
            session.execute(update(Delivery).where(Delivery.id == oru.id).values(**values))


def test_a_superseded_drafts_message_that_failed_in_flight_is_cancelled_not_failed(
    factory,
) -> None:
    """v1's ORU is on the wire when the re-draft lands (so it is not cancelled then); its attempt
    fails; its next claim cancels it — never a 'failed' row for a version nobody will send."""
    study_id = _draft(factory)
    (v1,) = _rows(factory)
    assert _claim(factory, v1.id) == "claimed"
    _draft(factory, study_id, "second")
    with factory.begin() as session:
        deliveries.record_outcome(session, v1.id, datetime.now(UTC), error=TimeoutError("no ACK"))
    assert _claim(factory, v1.id) == "cancelled"
    v1, v2 = _rows(factory)
    assert v1.state == DeliveryState.CANCELLED and "superseded" in (v1.last_error or "")
    assert _claim(factory, v2.id) == "claimed"


def test_a_cancelled_message_that_was_attempted_says_the_receiver_may_hold_it(factory) -> None:
    """A worker died mid-send (its answer lost), then the signature superseded the draft: the
    row must not claim the message never went out."""
    study_id = _draft(factory)
    (p,) = _rows(factory)
    assert _claim(factory, p.id) == "claimed"
    with factory.begin() as session:
        later = datetime.now(UTC) + deliveries.ATTEMPT_LEASE + timedelta(seconds=1)
        assert deliveries.take_back_expired(session, p.id, later)
    _sign(factory, study_id, 1)
    p = _rows(factory)[0]
    assert p.state == DeliveryState.CANCELLED and "may hold it" in (p.last_error or "")
