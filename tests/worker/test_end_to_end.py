"""storescu → Orthanc → listener → worker → SR back in Orthanc and ORU at the RIS, untouched by hand."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import func, select

from shared.db.models import DeliveryKind, DraftJob, Study, StudyState
from shared.hl7.oru_read import read_oru
from tests.worker.conftest import Pipeline, phantom, storescu, wait_for

E2E_TIMEOUT_S = 180.0


def _scoord_polylines(dataset: Dataset) -> list[tuple[float, ...]]:
    """Each finding's box: the "Image Region" (DCM 111030) of its TID 1410 group (the NUMs of
    its TID 1501 group repeat it as the region they are inferred from)."""
    found: list[tuple[float, ...]] = []
    for item in dataset.get("ContentSequence", []):
        if item.ValueType == "SCOORD" and item.ConceptNameCodeSequence[0].CodeValue == "111030":
            found.append(tuple(round(float(v), 2) for v in item.GraphicData))
        found.extend(_scoord_polylines(item))
    return found


def _texts(dataset: Dataset) -> list[str]:
    found: list[str] = []
    for item in dataset.get("ContentSequence", []):
        if item.ValueType == "TEXT":
            found.append(str(item.TextValue))
        found.extend(_texts(item))
    return found


def _fetch_sr(pipeline: Pipeline, sop_instance_uid: str, out: Path) -> Dataset:
    assert pipeline.orthanc is not None
    client = pipeline.orthanc.client
    ids: list[Any] = client.post_json(
        "/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}}
    )
    assert len(ids) == 1, f"SR {sop_instance_uid} is not in the PACS"
    out.write_bytes(client._request("GET", f"/instances/{ids[0]}/file"))
    return pydicom.dcmread(out)


def test_chest_xray_and_ct_are_drafted_and_delivered_with_no_human_touch(
    pipeline_factory, tmp_path: Path
) -> None:
    pipeline: Pipeline = pipeline_factory()
    assert pipeline.orthanc is not None and pipeline.sink is not None
    cxr = phantom("cxr", tmp_path / "in", chinese=True, abnormal=True)
    ct = phantom("chest_ct", tmp_path / "in", abnormal=True, slices=24, max_side=320)
    for study in (cxr, ct):
        storescu(study.files, pipeline.orthanc.dicom_port, pipeline.orthanc.ae_title)

    for study in (cxr, ct):
        try:
            wait_for(
                lambda s=study: pipeline.delivered(s.study_instance_uid),
                E2E_TIMEOUT_S,
                f"{study.domain} drafted and delivered",
            )
        except AssertionError:
            print(pipeline.diagnostics())
            raise

    for study in (cxr, ct):
        report = pipeline.current_report(study.study_instance_uid)
        assert report is not None and report.version == 1 and report.domain == study.domain
        with pipeline.session() as session:
            report = session.merge(report)
            findings = list(report.findings)
            sr_delivery = next(d for d in report.deliveries if d.kind == DeliveryKind.SR)
            hl7_delivery = next(d for d in report.deliveries if d.kind == DeliveryKind.HL7)
        assert findings and all(f.sop_instance_uid in study.sop_instance_uids for f in findings)
        assert hl7_delivery.ack_code == "AA" and sr_delivery.ack_code == "0x0000"

        # The SR in the PACS carries exactly the stored boxes, on the stored key images.
        sr_path = tmp_path / f"{study.domain}-sr.dcm"
        sr = _fetch_sr(pipeline, sr_delivery.message_id, sr_path)
        assert sr.PreliminaryFlag == "PRELIMINARY" and sr.VerificationFlag == "UNVERIFIED"
        # GraphicData is FL (float32): round what the SR can hold, not the database's float64
        stored = sorted(
            tuple(
                round(float(np.float32(v)), 2)
                for v in (f.x1, f.y1, f.x2, f.y1, f.x2, f.y2, f.x1, f.y2, f.x1, f.y1)
            )
            for f in findings
            if f.x1 is not None and f.finding_code is not None  # normal regions: narrative only
        )
        assert sorted(_scoord_polylines(sr)) == stored
        texts = _texts(sr)
        assert report.impression_en in texts and report.impression_zh in texts
        validation = subprocess.run(["dciodvfy", str(sr_path)], capture_output=True, text=True)
        assert "Error" not in validation.stderr + validation.stdout, validation.stderr

        # The ORU at the RIS matches the report.
        message = (pipeline.sink.out_dir / f"{hl7_delivery.message_id}.hl7").read_text("utf-8")
        oru = read_oru(message)
        assert oru.result_status == "P"
        assert set(oru.lines("en")) >= {s["en"] for s in report.sentences}
        assert set(oru.lines("zh")) >= {s["zh"] for s in report.sentences}
        if study is cxr:
            assert "=" in study.patient_name
            assert study.patient_name.split("=")[1].split("^")[0] in message  # Chinese family name

    # Our own SR went back into Orthanc and fired STABLE_STUDY again: it must not re-draft.
    with pipeline.session() as session:
        jobs_before = session.scalar(select(func.count()).select_from(DraftJob))
    time.sleep(4.0)  # Orthanc StableAge 1 s + listener STABLE_AGE 1 s + sweeps
    with pipeline.session() as session:
        assert session.scalar(select(func.count()).select_from(DraftJob)) == jobs_before == 2
        states = set(session.scalars(select(Study.state)))
        assert states == {StudyState.DRAFTED}
