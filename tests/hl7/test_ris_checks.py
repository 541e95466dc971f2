"""The ORU as an interface engine checks it, end to end over MLLP: a study row with its procedure
code, a stored draft, the delivery worker's real attempt (configured MEDREGA_HL7_* settings) and
a RIS sink that NAKs what it does not expect. Accepted: delivered and stored with the expected
MSH-3..6, PID-3 authority and OBR-4. Mismatched: the RIS's AR/AE is what the delivery records."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from ops.ris_checks import RisExpectations
from ops.ris_sink import RisSink, SinkBehaviour
from services.worker.delivery import attempt_delivery
from shared.config import REPO_ROOT, Settings, get_settings
from shared.db.models import Delivery, DeliveryState
from shared.delivery_policy import DeliveryError
from shared.hl7.er7 import read_er7
from shared.hl7.mllp import send_message
from shared.hl7.oru import build_oru
from shared.hl7.oru_header import HierarchicDesignator, OruHeader
from shared.reports import lifecycle
from tests.hl7.conftest import make_input
from tests.reports.world import make_study, make_user, model_result, running_job

SITE = {
    "MEDREGA_HL7_SENDING_APPLICATION": "MEDREGA_AI^1.2.826.0.1.3680043.8.498.1^ISO",
    "MEDREGA_HL7_SENDING_FACILITY": "RADIOLOGY",
    "MEDREGA_HL7_RECEIVING_APPLICATION": "EPIC_RAD",
    "MEDREGA_HL7_RECEIVING_FACILITY": "CITY_HOSP",
    "MEDREGA_HL7_PATIENT_ID_AUTHORITY": "CITY_MRN^2.16.840.1.113883.3.999^ISO",
    "MEDREGA_HL7_DEFAULT_PROCEDURE": "RAD000^Imaging study, unspecified^99CITY",
}
# What the RIS's engine was set up with: the same values, as they appear on the wire.
ENGINE = RisExpectations(
    sending_application="MEDREGA_AI^1.2.826.0.1.3680043.8.498.1^ISO",
    sending_facility="RADIOLOGY",
    receiving_application="EPIC_RAD",
    receiving_facility="CITY_HOSP",
    patient_id_authority="CITY_MRN&2.16.840.1.113883.3.999&ISO",
    procedure_codes=frozenset({"36643-5^LN", "RAD000^99CITY"}),
)
CHEST_XRAY = ("36643-5", "LN", "XR Chest 2 Views")


@pytest.fixture
def site(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[..., RisSink]]:
    """Configure the site's HL7 settings and start a checking RIS on a free port."""
    sinks: list[RisSink] = []

    def start(expect: RisExpectations = ENGINE, **overrides: str) -> RisSink:
        sink = RisSink(
            tmp_path / f"ris{len(sinks)}", behaviour=SinkBehaviour(expect=expect)
        ).start()
        sinks.append(sink)
        for name, value in {**SITE, **overrides, "MEDREGA_RIS_PORT": str(sink.port)}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("MEDREGA_RIS_ACK_POLICY", "AE=fail,AR=fail")
        get_settings.cache_clear()
        return sink

    yield start
    for sink in sinks:
        sink.stop()
    get_settings.cache_clear()


def _draft_oru(engine: Engine, procedure: tuple[str, str, str] | None) -> Delivery:
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory.begin() as session:
        study = make_study(session)
        if procedure is not None:
            (
                study.procedure_code_value,
                study.procedure_code_scheme,
                study.procedure_code_meaning,
            ) = procedure
        make_user(session)
        assert lifecycle.store_draft(session, running_job(session, study), model_result())
    return _oru_row(factory)


def _oru_row(factory: sessionmaker[Session]) -> Delivery:
    with factory() as session:
        return session.scalars(select(Delivery).where(Delivery.kind == "hl7")).one()


def test_the_ris_accepts_the_configured_envelope_and_the_studys_procedure(
    clean_db: Engine, site: Callable[..., RisSink]
) -> None:
    sink = site()
    oru = _draft_oru(clean_db, CHEST_XRAY)
    assert attempt_delivery(clean_db, oru.id) == "delivered"
    message = read_er7((sink.out_dir / f"{oru.message_id}.hl7").read_text("utf-8"))
    msh = message.segment("MSH")
    assert msh is not None and msh[3:7] == (
        "MEDREGA_AI^1.2.826.0.1.3680043.8.498.1^ISO",
        "RADIOLOGY",
        "EPIC_RAD",
        "CITY_HOSP",
    )
    pid = message.segment("PID")
    assert pid is not None and pid[3].split("^")[3] == "CITY_MRN&2.16.840.1.113883.3.999&ISO"
    obr = message.segment("OBR")
    assert obr is not None and obr[4] == "36643-5^XR Chest 2 Views^LN"


def test_a_study_without_a_procedure_code_carries_the_configured_default(
    clean_db: Engine, site: Callable[..., RisSink]
) -> None:
    sink = site()
    oru = _draft_oru(clean_db, None)
    assert attempt_delivery(clean_db, oru.id) == "delivered"
    obr = read_er7((sink.out_dir / f"{oru.message_id}.hl7").read_text("utf-8")).segment("OBR")
    assert obr is not None and obr[4] == "RAD000^Imaging study, unspecified^99CITY"


@pytest.mark.parametrize(
    ("overrides", "procedure", "code", "field"),
    [
        ({"MEDREGA_HL7_RECEIVING_FACILITY": "OTHER_HOSP"}, CHEST_XRAY, "AR", "MSH-6"),
        ({"MEDREGA_HL7_RECEIVING_APPLICATION": "RIS"}, CHEST_XRAY, "AR", "MSH-5"),
        ({"MEDREGA_HL7_SENDING_APPLICATION": "MEDREGA_PACS"}, CHEST_XRAY, "AR", "MSH-3"),
        ({"MEDREGA_HL7_SENDING_FACILITY": ""}, CHEST_XRAY, "AR", "MSH-4"),
        ({"MEDREGA_HL7_PATIENT_ID_AUTHORITY": "OLD_MRN"}, CHEST_XRAY, "AE", "PID-3.4"),
        ({}, ("71046", "CPT4", "X-ray chest 2 views"), "AE", "OBR-4"),
        ({"MEDREGA_HL7_DEFAULT_PROCEDURE": "18748-4^Diagnostic imaging study^LN"}, None, "AE",
         "OBR-4"),
    ],
)  # fmt: skip
def test_a_mismatch_is_refused_by_the_ris_and_recorded_on_the_delivery(
    clean_db: Engine,
    site: Callable[..., RisSink],
    overrides: dict[str, str],
    procedure: tuple[str, str, str] | None,
    code: str,
    field: str,
) -> None:
    sink = site(**overrides)
    oru = _draft_oru(clean_db, procedure)
    assert attempt_delivery(clean_db, oru.id) == "failed"  # the site's policy: AE/AR fail
    row = _oru_row(sessionmaker(clean_db))
    assert row.state == DeliveryState.FAILED and row.ack_code == code
    assert row.last_error is not None and field in row.last_error
    assert sink.received == 1 and list(sink.out_dir.glob("*.hl7")) == []
    # The RIS's reason names the field, never the patient.
    assert "P" + str(row.study_id) not in row.last_error and "Wang" not in row.last_error


def test_the_ris_sink_cli_checks_the_envelope(tmp_path: Path) -> None:
    """`python -m ops.ris_sink --expect-*` as `make run` would start it: AR on a wrong MSH-6,
    AA when the sender is configured as the RIS expects."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ops.ris_sink", "--port", "0", "--out", str(tmp_path / "in"),
         "--expect-receiving-facility", "CITY_HOSP", "--expect-procedure", "18748-4^LN"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline().split()[4].rsplit(":", 1)[1])
        wrong = build_oru(make_input(), "ORU42V1")
        with pytest.raises(DeliveryError) as refused:
            send_message(wrong, host="127.0.0.1", port=port, timeout_s=5)
        assert refused.value.ack_code == "AR" and "MSH-6" in refused.value.detail
        header = OruHeader(receiving_facility=HierarchicDesignator("CITY_HOSP"))
        right = build_oru(make_input(), "ORU42V2", header=header)
        assert send_message(right, host="127.0.0.1", port=port, timeout_s=5).accepted
        assert [p.name for p in (tmp_path / "in").iterdir()] == ["ORU42V2.hl7"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=10)
    assert process.returncode == 0


def test_malformed_settings_stop_the_start() -> None:
    with pytest.raises(ValueError, match="universal ID and its type"):
        Settings(hl7_receiving_facility="CITY^1.2.3")
    with pytest.raises(ValueError, match="code\\^meaning\\^coding system"):
        Settings(hl7_default_procedure="18748-4")
    assert Settings(hl7_receiving_facility="CITY^1.2.3^ISO").oru_header().receiving_facility == (
        HierarchicDesignator("CITY", "1.2.3", "ISO")
    )
