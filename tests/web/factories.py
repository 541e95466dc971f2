"""Rows the web tests need, written directly: users, and drafted studies on phantom images.

A drafted study here is what the worker would have stored (study, series, instances, a version-1
report with grounded findings and sentences, its draft deliveries) without running the model, so
API tests don't depend on the model or the worker.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
from sqlalchemy.orm import Session

from model.phantoms.__main__ import write_phantom_study
from services.web.passwords import hash_password
from shared.db.models import (
    DeliveryKind,
    DeliveryState,
    DraftJob,
    DraftJobState,
    Instance,
    RegionFinding,
    Report,
    ReportStatus,
    Series,
    Study,
    StudyState,
    User,
    UserRole,
)
from shared.reports.deliveries import create_deliveries
from shared.vocab import load_vocab

PASSWORD = "correct-horse-battery"


def make_user(
    session: Session, username: str, role: UserRole = UserRole.RADIOLOGIST, **extra: object
) -> User:
    user = User(
        username=username,
        password_hash=hash_password(PASSWORD),
        full_name=str(extra.pop("full_name", username.replace(".", " ").title())),
        dicom_person_name=str(extra.pop("dicom_person_name", "Li^Wei")),
        role=role,
        active=bool(extra.pop("active", True)),
    )
    session.add(user)
    session.commit()
    return user


@dataclass
class DraftedStudy:
    study_id: int
    report_id: int
    study_instance_uid: str
    sop_instance_uids: list[str]
    rows: int
    columns: int


def _store(
    session: Session, study: Study, files: list[Path], storage: Path, modality: str
) -> tuple[list[str], int, int]:
    series_row: Series | None = None
    uids = []
    rows = columns = 0
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if series_row is None:
            series_row = Series(
                study_id=study.id,
                series_instance_uid=str(ds.SeriesInstanceUID),
                modality=modality,
                series_number=int(ds.get("SeriesNumber", 1) or 1),
                series_description=str(ds.get("SeriesDescription", "")),
                body_part_examined=str(ds.get("BodyPartExamined", "")),
            )
            session.add(series_row)
            session.flush()
        relative = f"{study.study_instance_uid}/{ds.SOPInstanceUID}.dcm"
        target = storage / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        rows, columns = int(ds.Rows), int(ds.Columns)
        session.add(
            Instance(
                series_id=series_row.id,
                study_id=study.id,
                sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                instance_number=int(ds.get("InstanceNumber", 1) or 1),
                rows=rows,
                columns=columns,
                number_of_frames=int(ds.get("NumberOfFrames", 1) or 1),
                file_path=relative,
                size_bytes=target.stat().st_size,
                sha256=hashlib.sha256(target.read_bytes()).hexdigest(),
            )
        )
        uids.append(str(ds.SOPInstanceUID))
    return uids, rows, columns


def make_drafted_study(
    session: Session,
    storage: Path,
    work: Path,
    *,
    domain: str = "cxr",
    seed: int = 1,
    critical: bool = False,
    patient_name: str | None = None,
    received_minutes_ago: float = 10,
) -> DraftedStudy:
    """A phantom study with a v1 model draft: one abnormal finding and two normal regions."""
    slices = 3 if domain != "cxr" else None
    written = write_phantom_study(
        domain, seed, work / f"{domain}-{seed}", n_slices=slices, max_side=256
    )  # type: ignore[arg-type]
    demo = written.demographics
    received = datetime.now(UTC) - timedelta(minutes=received_minutes_ago)
    study = Study(
        study_instance_uid=written.study_instance_uid,
        patient_id=demo.patient_id,
        patient_name=patient_name or demo.patient_name,
        patient_birth_date=demo.patient_birth_date,
        patient_sex=demo.patient_sex,
        accession_number=demo.accession_number or f"ACC{seed:05d}",
        study_date=demo.study_date,
        study_time=demo.study_time,
        study_description=f"{domain} phantom",
        state=StudyState.DRAFTED,
        critical=critical,
        instance_count=len(written.files),
        first_received_at=received,
        last_received_at=received,
    )
    session.add(study)
    session.flush()
    uids, rows, columns = _store(session, study, written.files, storage, written.modality)
    job = DraftJob(
        study_id=study.id,
        instance_set_sha256=hashlib.sha256("".join(sorted(uids)).encode()).hexdigest(),
        instance_count=len(uids),
        state=DraftJobState.DONE,
        finished_at=datetime.now(UTC),
        timings={"total_ms": 800.0},
    )
    session.add(job)
    session.flush()

    vocab = load_vocab()
    region_codes = [r.code for r in vocab.regions_for(domain)]
    abnormal_info = next(f for f in vocab.findings_for(domain) if f.critical == critical)
    lesion_region = vocab.region(abnormal_info.regions[0])
    normal_regions = [vocab.region(c) for c in region_codes if c != lesion_region.code][:2]
    key_uid = uids[len(uids) // 2]
    w, h = columns, rows
    findings = [
        RegionFinding(
            ordinal=0,
            region_code=lesion_region.code,
            region_name_en=lesion_region.en,
            region_name_zh=lesion_region.zh,
            finding_code=abnormal_info.code,
            finding_name_en=abnormal_info.en,
            finding_name_zh=abnormal_info.zh,
            probability=0.91,
            critical=abnormal_info.critical,
            size_mm=14.0,
            sop_instance_uid=key_uid,
            frame_number=1,
            x1=w * 0.20,
            y1=h * 0.30,
            x2=w * 0.35,
            y2=h * 0.45,
            sentence_en=abnormal_info.sentence("en", lesion_region, 14.0),
            sentence_zh=abnormal_info.sentence("zh", lesion_region, 14.0),
        )  # fmt: skip
    ]
    for index, region in enumerate(normal_regions, start=1):
        x0 = 0.05 + 0.45 * (index - 1)
        findings.append(
            RegionFinding(
                ordinal=index,
                region_code=region.code,
                region_name_en=region.en,
                region_name_zh=region.zh,
                probability=0.97,
                sop_instance_uid=key_uid,
                frame_number=1,
                x1=w * x0,
                y1=h * 0.1,
                x2=w * (x0 + 0.45),
                y2=h * 0.9,
                sentence_en=vocab.normal.region_sentence("en", region.en, plural=region.plural),
                sentence_zh=vocab.normal.region_sentence("zh", region.zh),
            )  # fmt: skip
        )
    sentences = [
        {
            "section": "findings",
            "en": f.sentence_en,
            "zh": f.sentence_zh,
            "finding_ordinals": [f.ordinal],
        }
        for f in findings
    ]
    sentences.append(
        {
            "section": "impression",
            "en": abnormal_info.impression("en", lesion_region),
            "zh": abnormal_info.impression("zh", lesion_region),
            "finding_ordinals": [0],
        }
    )
    report = Report(
        study_id=study.id,
        draft_job_id=job.id,
        version=1,
        status=ReportStatus.DRAFT,
        model_name="medrega-ref",
        model_version="test",
        model_backend="onnx",
        domain=domain,
        findings_en=" ".join(s["en"] for s in sentences if s["section"] == "findings"),
        findings_zh=" ".join(s["zh"] for s in sentences if s["section"] == "findings"),
        impression_en=sentences[-1]["en"],
        impression_zh=sentences[-1]["zh"],
        sentences=sentences,
    )
    session.add(report)
    session.flush()
    for f in findings:
        f.report_id = report.id
        session.add(f)
    # The draft's SR and ORU went out: claimed (in flight), then acknowledged, as the guard
    # (migration 0003) lets a delivery become delivered only from in flight.
    now = datetime.now(UTC)
    for delivery in create_deliveries(session, report):
        delivery.state, delivery.lease_until = DeliveryState.IN_FLIGHT, now
        delivery.attempts = 1
        session.flush()
        delivery.state, delivery.lease_until, delivery.delivered_at = (
            DeliveryState.DELIVERED,
            None,
            now,
        )
        delivery.ack_code = "AA" if delivery.kind == DeliveryKind.HL7 else "0x0000"
        session.flush()
    session.commit()
    return DraftedStudy(study.id, report.id, study.study_instance_uid, uids, rows, columns)
