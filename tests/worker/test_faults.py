"""Faults end with every SR and ORU delivered once per version (ARCHITECTURE invariant 3)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from shared.config import get_settings
from shared.db.models import (
    DeliveryKind,
    DeliveryState,
    DraftJob,
    DraftJobState,
    Report,
    Study,
)
from shared.reports import lifecycle
from tests.reports.world import make_user
from tests.worker.conftest import Pipeline, phantom, storescu, wait_for

TIMEOUT_S = 180.0


def _pacs_comes_back(pipeline: Pipeline, received: Path) -> subprocess.Popen[bytes]:
    """A DCMTK storescp as the PACS, on the pipeline's PACS port, storing into `received`."""
    received.mkdir()
    return subprocess.Popen(
        ["storescp", "--aetitle", "ORTHANC", "--output-directory", str(received),
         str(pipeline.pacs_port)],
        env={**os.environ, "TCP_NODELAY": "1"},
    )  # fmt: skip


def _delivery(pipeline: Pipeline, study_uid: str, kind: DeliveryKind):
    return next((d for d in pipeline.deliveries(study_uid) if d.kind == kind), None)


def test_ris_down_while_drafting_then_up_is_delivered_after(
    pipeline_factory, tmp_path: Path
) -> None:
    pipeline: Pipeline = pipeline_factory(with_orthanc=False, with_sink=False, with_worker=True)
    study = phantom("cxr", tmp_path / "in", abnormal=True)
    storescu(study.files, pipeline.listener.port, pipeline.listener.ae_title)

    def hl7_failed_once() -> bool:
        delivery = _delivery(pipeline, study.study_instance_uid, DeliveryKind.HL7)
        return delivery is not None and delivery.attempts >= 1 and delivery.last_error is not None

    wait_for(hl7_failed_once, TIMEOUT_S, "a failed ORU attempt while the RIS is down")
    delivery = _delivery(pipeline, study.study_instance_uid, DeliveryKind.HL7)
    assert delivery is not None and delivery.state == DeliveryState.RETRYING
    assert delivery.error_class == "transient"
    assert "connect" in (delivery.last_error or "")

    sink = pipeline.start_sink()
    wait_for(
        lambda: (
            (d := _delivery(pipeline, study.study_instance_uid, DeliveryKind.HL7))
            and d.state == DeliveryState.DELIVERED
        ),
        TIMEOUT_S,
        "the ORU delivered once the RIS is back",
    )
    assert (sink.out_dir / f"{delivery.message_id}.hl7").exists()
    assert sink.received == 1


def test_pacs_down_then_up_gets_the_sr(pipeline_factory, tmp_path: Path) -> None:
    pipeline: Pipeline = pipeline_factory(with_orthanc=False)
    study = phantom("cxr", tmp_path / "in", abnormal=False)
    storescu(study.files, pipeline.listener.port, pipeline.listener.ae_title)

    def sr_failed_once() -> bool:
        delivery = _delivery(pipeline, study.study_instance_uid, DeliveryKind.SR)
        return delivery is not None and delivery.attempts >= 1 and delivery.last_error is not None

    wait_for(sr_failed_once, TIMEOUT_S, "a failed SR attempt while the PACS is down")
    received = tmp_path / "pacs"
    pacs = _pacs_comes_back(pipeline, received)
    try:
        wait_for(
            lambda: (
                (d := _delivery(pipeline, study.study_instance_uid, DeliveryKind.SR))
                and d.state == DeliveryState.DELIVERED
            ),
            TIMEOUT_S,
            "the SR delivered once the PACS is back",
        )
    finally:
        pacs.terminate()
        pacs.wait(timeout=10)
    delivery = _delivery(pipeline, study.study_instance_uid, DeliveryKind.SR)
    assert delivery is not None
    files = list(received.iterdir())
    assert len(files) == 1 and delivery.message_id in files[0].name


def test_worker_killed_during_inference_drafts_exactly_once(
    pipeline_factory, tmp_path: Path
) -> None:
    pipeline: Pipeline = pipeline_factory(with_orthanc=False, with_worker=False)
    # Enough slices that inference takes seconds on this CPU: time to kill it mid-way.
    study = phantom("abd_ct", tmp_path / "in", slices=160)
    storescu(study.files, pipeline.listener.port, pipeline.listener.ae_title)
    doomed = pipeline.start_worker()

    def running() -> bool:
        with pipeline.session() as session:
            return bool(
                session.scalar(select(DraftJob).where(DraftJob.state == DraftJobState.RUNNING))
            )

    wait_for(running, TIMEOUT_S, "the draft job running")
    doomed.kill()
    with pipeline.session() as session:
        assert session.scalar(select(func.count()).select_from(Report)) == 0

    pipeline.start_worker()

    def oru_delivered() -> bool:  # no PACS runs in this test: the ORU is the end of the line
        delivery = _delivery(pipeline, study.study_instance_uid, DeliveryKind.HL7)
        return delivery is not None and delivery.state == DeliveryState.DELIVERED

    wait_for(oru_delivered, TIMEOUT_S, "drafted and the ORU delivered after the restart")
    with pipeline.session() as session:
        assert session.scalar(select(func.count()).select_from(Report)) == 1
        job = session.scalar(select(DraftJob))
        assert job is not None and job.state == DraftJobState.DONE and job.attempts >= 2
    assert pipeline.sink is not None and pipeline.sink.received == 1


def test_signed_while_the_pacs_is_down_the_final_sr_goes_alone(
    pipeline_factory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """The draft's SR never reached the PACS; the signature cancels it. The final SR then goes
    once the PACS is back — without a predecessor (it replaces nothing the PACS has), VERIFIED —
    and the draft's SR never follows it."""
    pipeline: Pipeline = pipeline_factory(with_orthanc=False)
    study = phantom("cxr", tmp_path / "in", abnormal=False)
    storescu(study.files, pipeline.listener.port, pipeline.listener.ae_title)
    uid = study.study_instance_uid

    def draft_sr_failed_once() -> bool:
        delivery = _delivery(pipeline, uid, DeliveryKind.SR)
        return delivery is not None and delivery.attempts >= 1 and delivery.last_error is not None

    wait_for(draft_sr_failed_once, TIMEOUT_S, "a failed draft SR attempt while the PACS is down")
    # Sign here as the web would, with this pipeline's PACS and RIS as the destinations.
    for d in pipeline.deliveries(uid):
        prefix = "MEDREGA_RIS_PORT" if d.kind == DeliveryKind.HL7 else "MEDREGA_PACS_PORT"
        monkeypatch.setenv(prefix, d.destination.rpartition(":")[2])
    get_settings.cache_clear()
    request.addfinalizer(get_settings.cache_clear)  # before monkeypatch restores the environment
    with pipeline.session() as session:
        study_row = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        lifecycle.sign(session, study_row, make_user(session), 1)
        session.commit()
    received = tmp_path / "pacs"
    pacs = _pacs_comes_back(pipeline, received)
    try:
        wait_for(
            lambda: any(
                d.kind == DeliveryKind.SR and d.result_status == "F" and d.state == "delivered"
                for d in pipeline.deliveries(uid)
            ),
            TIMEOUT_S,
            "the final SR delivered once the PACS is back",
        )
    finally:
        pacs.terminate()
        pacs.wait(timeout=10)
    states = {(d.kind, d.result_status, d.state) for d in pipeline.deliveries(uid)}
    assert ("sr", "P", "cancelled") in states and ("sr", "F", "delivered") in states
    (file,) = received.iterdir()
    sr = pydicom.dcmread(file)
    assert sr.VerificationFlag == "VERIFIED" and "PredecessorDocumentsSequence" not in sr
