"""GSPS and KOS deliveries follow the SR's rules: created with the version, per (study, kind,
destination) never backwards, cancelled when superseded, and only what the PACS is configured
to get. The rules are shared/reports/deliveries.py's; the database trigger of migration 0003
guards them for the new kinds too."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared.config import get_settings
from shared.db.models import Delivery, DeliveryKind, DeliveryState
from shared.reports import deliveries, lifecycle
from shared.reports.message_ids import gsps_series_uid, kos_uids
from tests.reports.test_deliveries import _amend_and_sign, _claim, _rows, _sign
from tests.reports.world import make_study, make_user, model_result, running_job


@pytest.fixture
def factory(clean_db: Engine) -> Iterator[sessionmaker[Session]]:
    get_settings.cache_clear()
    yield sessionmaker(clean_db, expire_on_commit=False)
    get_settings.cache_clear()


def _draft(factory: sessionmaker[Session], abnormal: bool = True) -> int:
    with factory.begin() as session:
        study = make_study(session)
        make_user(session)
        job = running_job(session, study)
        assert lifecycle.store_draft(session, job, model_result(abnormal)) is not None
        return study.id


def _outcome(factory: sessionmaker[Session], delivery_id: int, error: Exception | None) -> None:
    with factory.begin() as session:
        deliveries.record_outcome(
            session, delivery_id, datetime.now(UTC), ack_code="0x0000", error=error
        )


def test_a_draft_with_a_boxed_finding_sends_sr_gsps_and_kos_beside_the_oru(factory) -> None:
    _draft(factory)
    with factory() as session:
        rows = {d.kind: d for d in session.scalars(select(Delivery))}
    assert set(rows) == {"sr", "gsps", "kos", "hl7"}
    report_id = rows["gsps"].report_id
    assert rows["gsps"].message_id == gsps_series_uid(report_id, 1)
    assert rows["kos"].message_id == kos_uids(report_id, 1).sop_instance_uid
    assert rows["gsps"].destination == rows["sr"].destination == deliveries.pacs_destination()
    assert {d.result_status for d in rows.values()} == {"P"}


def test_a_normal_study_has_no_key_image_so_no_gsps_or_kos(factory) -> None:
    _draft(factory, abnormal=False)
    with factory() as session:
        assert sorted(d.kind for d in session.scalars(select(Delivery))) == ["hl7", "sr"]


@pytest.mark.parametrize(
    ("objects", "kinds"),
    [("sr", ["hl7", "sr"]), ("gsps,kos", ["gsps", "hl7", "kos"]), ("", ["hl7"])],
)
def test_the_pacs_gets_only_the_objects_it_is_configured_for(
    factory, monkeypatch: pytest.MonkeyPatch, objects: str, kinds: list[str]
) -> None:
    monkeypatch.setenv("MEDREGA_PACS_OBJECTS", objects)
    get_settings.cache_clear()
    _draft(factory)
    with factory() as session:
        assert sorted(d.kind for d in session.scalars(select(Delivery))) == kinds


def test_signing_cancels_the_unsent_draft_gsps_and_kos_and_the_database_agrees(factory) -> None:
    study_id = _draft(factory)
    _sign(factory, study_id, 1)
    for kind in (DeliveryKind.GSPS, DeliveryKind.KOS):
        p, f = _rows(factory, kind)
        assert (p.result_status, p.state) == ("P", DeliveryState.CANCELLED)
        assert "superseded by version 2" in (p.last_error or "")
        assert _claim(factory, p.id) == "cancelled"
        assert _claim(factory, f.id) == "claimed"
        with factory() as session, pytest.raises(IntegrityError, match="is cancelled and final"):
            session.execute(
                update(Delivery)
                .where(Delivery.id == p.id)
                .values(state="in_flight", lease_until=datetime.now(UTC))
            )


def test_a_draft_gsps_on_the_wire_holds_back_only_the_final_gsps(factory) -> None:
    """Order is per kind: the final SR and KOS go while the draft's GSPS is in flight; the
    final GSPS waits for it, and a draft GSPS that then fails never follows the final one."""
    study_id = _draft(factory)
    (p_gsps,) = _rows(factory, DeliveryKind.GSPS)
    assert _claim(factory, p_gsps.id) == "claimed"
    _sign(factory, study_id, 1)
    f_gsps = _rows(factory, DeliveryKind.GSPS)[1]
    assert _claim(factory, f_gsps.id) == "waiting"
    assert _claim(factory, _rows(factory, DeliveryKind.SR)[1].id) == "claimed"
    assert _claim(factory, _rows(factory, DeliveryKind.KOS)[1].id) == "claimed"
    _outcome(factory, p_gsps.id, OSError("association aborted"))
    assert _rows(factory, DeliveryKind.GSPS)[0].state == DeliveryState.RETRYING
    with factory() as session, pytest.raises(IntegrityError, match="preliminary result after"):
        session.execute(
            update(Delivery)
            .where(Delivery.id == p_gsps.id)
            .values(state="in_flight", lease_until=datetime.now(UTC))
        )
    assert _claim(factory, p_gsps.id) == "cancelled"
    assert _claim(factory, f_gsps.id) == "claimed"
    _outcome(factory, f_gsps.id, None)
    assert _rows(factory, DeliveryKind.GSPS)[1].state == DeliveryState.DELIVERED


def test_a_corrected_kos_waits_for_the_final_kos(factory) -> None:
    study_id = _draft(factory)
    _sign(factory, study_id, 1)
    _amend_and_sign(factory, study_id)
    _, f, c = _rows(factory, DeliveryKind.KOS)
    assert (f.result_status, c.result_status) == ("F", "C")
    assert _claim(factory, c.id) == "waiting"
    assert _claim(factory, f.id) == "claimed"
    _outcome(factory, f.id, None)
    assert _claim(factory, c.id) == "claimed"
