"""A small real run — a chest X-ray through Orthanc (drafted, then signed), the listener, the draft worker, the relay,
the delivery worker (SR to Orthanc, ORU to a RIS that NAKs the first message and checks the
envelope and OBR-4), a Locate on the interactive worker, a refused association, the web app —
then every process's /metrics, scraped on its own port, shows what happened, and the JSON logs
carry the study's correlation id and no patient data.

With MEDREGA_METRICS_SAMPLE_DIR set, each exposition is also saved there as
metrics-<process>.txt (the closing note's samples).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from ops.ris_checks import RisExpectations
from ops.ris_sink import RisSink, SinkBehaviour
from shared.config import get_settings
from shared.db.models import Delivery, DeliveryKind, DeliveryState, Instance, Series, Study
from shared.hl7.er7 import read_er7
from shared.reports import lifecycle
from shared.worker_client import ask_worker
from tests.observability.conftest import json_lines, scrape, value
from tests.reports.world import make_user
from tests.support.listener_process import free_port
from tests.support.web_process import start_web
from tests.support.worker_process import start_relay, start_worker
from tests.worker.conftest import Pipeline, phantom, storescu, wait_for

PROCESSES = ("listener", "draft_worker", "interactive_worker", "delivery_worker", "relay")
HL7_SITE = {
    "MEDREGA_HL7_RECEIVING_APPLICATION": "RIS_ENGINE",
    "MEDREGA_HL7_RECEIVING_FACILITY": "CITY_HOSP",
    "MEDREGA_HL7_PATIENT_ID_AUTHORITY": "CITY_MRN",
}


def _with_procedure_code(files: list[Path]) -> None:
    """The modality worklist's requested procedure, as a RIS-fed modality writes it."""
    for path in files:
        ds = pydicom.dcmread(path)
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator = "36643-5", "LN"
        item.CodeMeaning = "XR Chest 2 Views"
        ds.RequestedProcedureCodeSequence = [item]
        ds.save_as(path)


def _refused_association(port: int) -> None:
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    association = ae.associate("127.0.0.1", port, ae_title="MEDREGA_AI")
    assert association.is_rejected


def test_every_process_reports_the_run(
    pipeline_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = {name: free_port() for name in PROCESSES}
    for name, port in ports.items():
        monkeypatch.setenv(f"MEDREGA_METRICS_PORT_{name.upper()}", str(port))
    monkeypatch.setenv("MEDREGA_LOG_FORMAT", "json")
    for name, setting in HL7_SITE.items():
        monkeypatch.setenv(name, setting)
    get_settings.cache_clear()
    pipeline: Pipeline = pipeline_factory(with_worker=False, with_sink=False)
    assert pipeline.orthanc is not None
    for name, setting in pipeline.worker_env.items():  # queue prefix; the PACS and RIS that
        monkeypatch.setenv(name, setting)  # signing here records as the deliveries' destinations
    get_settings.cache_clear()
    env = pipeline.worker_env
    pipeline.sink = RisSink(
        pipeline.log_dir / "ris-inbox",
        port=pipeline.ris_port,
        behaviour=SinkBehaviour(
            reply="AE",
            fail_first=1,  # the first ORU is answered AE: one retry, then delivered
            expect=RisExpectations(
                receiving_application="RIS_ENGINE",
                receiving_facility="CITY_HOSP",
                patient_id_authority="CITY_MRN",
                procedure_codes=frozenset({"36643-5^LN"}),
            ),
        ),
    ).start()
    logs = pipeline.log_dir
    pipeline.workers.append(start_relay(env, logs / "relay.log"))
    for lane in ("draft", "interactive", "delivery"):
        pipeline.workers.append(start_worker(env, logs / f"{lane}.log", queues=(lane,)))

    cxr = phantom("cxr", tmp_path / "in", chinese=True, abnormal=True)
    _with_procedure_code(cxr.files)
    storescu(cxr.files, pipeline.orthanc.dicom_port, pipeline.orthanc.ae_title)
    uid = cxr.study_instance_uid
    wait_for(lambda: pipeline.delivered(uid), 180, f"draft delivered\n{pipeline.diagnostics()}")
    _refused_association(pipeline.listener.port)
    with pipeline.session() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == uid)).one()
        instance_id = session.scalars(
            select(Instance.id)
            .join(Series, Series.id == Instance.series_id)
            .where(Instance.study_id == study.id, Series.is_own_output.is_(False))
        ).first()
        oru = session.scalars(
            select(Delivery).where(Delivery.study_id == study.id, Delivery.kind == DeliveryKind.HL7)
        ).one()
    assert oru.attempts == 2  # AE, then AA
    with pipeline.session() as session, session.begin():  # the radiologist signs the draft
        signed = session.get(Study, study.id)
        assert signed is not None
        lifecycle.sign(session, signed, make_user(session), base_version=1)
    try:
        wait_for(lambda: _final_delivered(pipeline, study.id), 120, "the final report delivered")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {_states(pipeline, study.id)}") from None
    assert ask_worker("medrega.locate", [instance_id, 1, "right lung"], 60)["ok"] is True

    # The RIS checked and took the ORU: the configured envelope, OBR-4 from the study.
    stored = read_er7((pipeline.sink.out_dir / f"{oru.message_id}.hl7").read_text("utf-8"))
    assert stored.segment("OBR")[4] == "36643-5^XR Chest 2 Views^LN"  # type: ignore[index]

    web = start_web({"MEDREGA_LOG_FORMAT": "json"}, logs / "web.log")
    pipeline.workers.append(web)  # type: ignore[arg-type]
    metrics = {name: scrape(port) for name, port in ports.items()}
    metrics["web"] = _scrape_web(web.base_url)
    _save_samples(metrics)

    listener = metrics["listener"]
    assert value(listener, "medrega_listener_instances_total", outcome="stored") >= 1
    assert value(listener, "medrega_listener_refusals_total", reason="peer_not_allowed") == 1
    assert value(listener, "medrega_received_to_stable_seconds_count") >= 1
    assert value(listener, "medrega_listener_store_seconds_count") >= 1

    draft = metrics["draft_worker"]
    assert value(draft, "medrega_draft_jobs_finished_total", state="done") == 1
    assert value(draft, "medrega_stable_to_drafted_seconds_count") == 1
    assert value(draft, "medrega_draft_run_seconds_count") == 1

    delivery = metrics["delivery_worker"]
    assert value(delivery, "medrega_delivery_attempts_total", kind="hl7", state="retrying") == 1
    assert value(delivery, "medrega_delivery_attempts_total", kind="hl7", state="delivered") == 2
    assert value(delivery, "medrega_delivery_attempts_total", kind="sr", state="delivered") == 2
    for kind in ("sr", "hl7"):
        for status in ("P", "F"):  # the draft's, then the signed report's
            assert value(
                delivery, "medrega_drafted_to_delivered_seconds_count", kind=kind, status=status
            ) == 1  # fmt: skip
        assert value(delivery, "medrega_received_to_delivered_seconds_count", kind=kind) == 1

    interactive = metrics["interactive_worker"]
    assert (
        value(interactive, "medrega_interactive_requests_total", task="locate", outcome="ok") == 1
    )
    assert value(interactive, "medrega_interactive_seconds_count", task="locate") == 1

    relay = metrics["relay"]
    prefix = pipeline.worker_env["MEDREGA_QUEUE_PREFIX"]
    assert value(relay, "medrega_relay_published_total", kind="draft") >= 1
    assert value(relay, "medrega_relay_published_total", kind="deliver") >= 5  # P, retry, F
    assert value(relay, "medrega_broker_up") == 1
    assert value(relay, "medrega_queue_consumers", queue=f"{prefix}draft") == 1
    assert value(relay, "medrega_queue_messages", queue=f"{prefix}delivery") == 0
    assert value(relay, "medrega_deliveries", kind="hl7", state="delivered") == 2
    assert value(relay, "medrega_oldest_undelivered_seconds", kind="hl7") == 0

    web_metrics = metrics["web"]
    assert value(web_metrics, "medrega_studies", state="signed") == 1
    assert value(
        web_metrics, "medrega_web_requests_total", method="GET", route="/healthz", status="200"
    ) >= 1  # fmt: skip
    assert value(
        web_metrics, "medrega_listener_refused_associations_total", reason="peer_not_allowed"
    ) == 1  # fmt: skip

    _json_logs_carry_the_study_and_no_phi(pipeline, study)


def _final_delivered(pipeline: Pipeline, study_id: int) -> bool:
    with pipeline.session() as session:
        states = session.scalars(
            select(Delivery.state).where(
                Delivery.study_id == study_id, Delivery.report_version == 2
            )
        ).all()
    return bool(states) and all(state == DeliveryState.DELIVERED for state in states)


def _states(pipeline: Pipeline, study_id: int) -> list[tuple[object, ...]]:
    with pipeline.session() as session:
        rows = session.execute(
            select(
                Delivery.kind, Delivery.report_version, Delivery.state, Delivery.last_error
            ).where(Delivery.study_id == study_id)
        ).all()
    return [tuple(row) for row in rows]


def _scrape_web(base_url: str) -> str:
    import httpx

    httpx.get(base_url + "/healthz", timeout=10).raise_for_status()
    response = httpx.get(base_url + "/metrics", timeout=10)
    response.raise_for_status()
    return response.text


def _save_samples(metrics: dict[str, str]) -> None:
    out = os.environ.get("MEDREGA_METRICS_SAMPLE_DIR")
    if out:
        for name, text in metrics.items():
            Path(out, f"metrics-{name.replace('_', '-')}.txt").write_text(text)


def _json_logs_carry_the_study_and_no_phi(pipeline: Pipeline, study: Study) -> None:
    correlation = f"study-{study.id}"
    # Whole values, and each Latin name part as a word (a bare "Lin" is in "Linux").
    values = [
        study.patient_id,
        study.accession_number,
        study.patient_birth_date,
        study.patient_name,
    ]
    values += [g.replace("^", "") for g in (study.patient_name or "").split("=")[1:]]  # 林慧
    words = [p for p in re.split(r"[=^ ]", (study.patient_name or "").split("=")[0]) if p]
    assert study.patient_id and words, "the phantom has demographics to look for"
    seen: dict[str, int] = {}
    for name in ("listener", "draft", "delivery", "interactive", "relay", "web"):
        log = pipeline.log_dir / f"{name}.log"
        text = log.read_text(errors="replace")
        for phi in filter(None, values):
            assert phi not in text, f"{name}.log contains patient data"
        for word in words:
            assert not re.search(rf"\b{re.escape(word)}\b", text), f"{name}.log names the patient"
        lines = json_lines(log)
        assert lines or name == "web", f"{name}.log has no JSON lines"
        for line in lines:
            assert {"ts", "level", "service", "logger", "message"} <= line.keys()
        seen[name] = sum(1 for line in lines if line.get("correlation_id") == correlation)
    # The study's own steps are findable by its correlation id in each process that did one.
    assert seen["listener"] >= 1 and seen["draft"] >= 1 and seen["delivery"] >= 1, seen
