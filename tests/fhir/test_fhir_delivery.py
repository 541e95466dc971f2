"""The 'fhir' delivery end to end: with MEDREGA_FHIR_SERVER_URL set, signing creates a FHIR
delivery beside the SR and the ORU; the worker's attempt PUTs the DiagnosticReport to a real FHIR
server (tests/support), the correction updates the same resource, an outage is retried."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from services.worker.delivery import attempt_delivery
from shared.config import get_settings
from shared.db.models import Delivery, DeliveryKind, DeliveryState
from tests.fhir.test_fhir_api import _sign
from tests.support.fhir_server import running_fhir_server
from tests.web.factories import DraftedStudy
from tests.web.test_api import _edit


def _fhir_delivery(db: Session, study_id: int, version: int) -> Delivery:
    db.expire_all()
    return db.scalars(
        select(Delivery).where(
            Delivery.study_id == study_id,
            Delivery.kind == DeliveryKind.FHIR,
            Delivery.report_version == version,
        )
    ).one()


def test_signing_pushes_the_report_and_a_correction_updates_it(
    rad_client: TestClient,
    drafted: DraftedStudy,
    db_session: Session,
    clean_db: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sid, uid = drafted.study_id, drafted.study_instance_uid
    with running_fhir_server(token="ehr-token") as (base, store):
        monkeypatch.setenv("MEDREGA_FHIR_SERVER_URL", base)
        monkeypatch.setenv("MEDREGA_FHIR_SERVER_TOKEN", "ehr-token")
        get_settings.cache_clear()
        _sign(rad_client, sid, 1)
        final = _fhir_delivery(db_session, sid, 2)
        assert (final.result_status, final.destination) == ("F", base)
        store.fail_next = [503]  # the EHR is down for the first attempt
        assert attempt_delivery(clean_db, final.id) == DeliveryState.RETRYING
        assert "HTTP 503" in (_fhir_delivery(db_session, sid, 2).last_error or "")
        assert attempt_delivery(clean_db, final.id) == DeliveryState.DELIVERED
        (resource_id,) = store.versions
        assert store.current(resource_id)["status"] == "final"
        assert store.current(resource_id)["identifier"][0]["value"] == uid
        assert _fhir_delivery(db_session, sid, 2).ack_code == "201"

        _edit(
            rad_client,
            sid,
            2,
            {"op": "edit_sentence", "index": 0, "en": "Amended.", "zh": "已修改。"},
        )
        _sign(rad_client, sid, 3)
        corrected = _fhir_delivery(db_session, sid, 4)
        assert attempt_delivery(clean_db, corrected.id) == DeliveryState.DELIVERED
        assert list(store.versions) == [resource_id]  # the same resource, updated
        assert [v["status"] for v in store.versions[resource_id]] == ["final", "corrected"]
        assert "Amended." in store.current(resource_id)["text"]["div"]
    get_settings.cache_clear()


def test_without_a_fhir_server_no_fhir_delivery_is_made(
    rad_client: TestClient, drafted: DraftedStudy, db_session: Session
) -> None:
    assert get_settings().fhir_server_url is None
    _sign(rad_client, drafted.study_id, 1)
    kinds = set(db_session.scalars(select(Delivery.kind).where(Delivery.report_version == 2)))
    assert DeliveryKind.FHIR not in kinds and DeliveryKind.HL7 in kinds
