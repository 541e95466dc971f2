"""One delivery attempt: build the message from the database rows, send it, record the outcome.

The row is the source of truth: what to send (report version), where (destination recorded at
creation), under which ID (SR SOP Instance UID / HL7 control ID derived from the version), how
often it was tried and when to try again. Only a DIMSE success or an HL7 `AA` marks it delivered.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from pydicom import Dataset, dcmread
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from shared.config import get_settings
from shared.db.advisory_locks import LockSpace, try_advisory_lock
from shared.db.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    FindingReview,
    Instance,
    RegionFinding,
    Report,
    ReportStatus,
    Study,
    User,
)
from shared.delivery_policy import DeliveryError, after_failure
from shared.dicom.scu import StoreError, store_dataset
from shared.dicom.sr_builder import build_report_sr, sr_uids
from shared.dicom.sr_content import PredecessorRef, SrContext, SrReport, VerifyingObserver
from shared.hl7.mllp import send_message
from shared.hl7.oru import OruInput, build_oru
from shared.reports.domain import ImageRef, Language, PixelBox, RegionFindingResult

log = logging.getLogger(__name__)

SR_STATUS = {
    ReportStatus.DRAFT: "draft",
    ReportStatus.EDITED: "draft",
    ReportStatus.SUPERSEDED: "draft",
    ReportStatus.SIGNED: "final",
    ReportStatus.CORRECTED: "corrected",
}


class MessageBuildError(DeliveryError):
    """The stored report can't become a valid message (missing source image, bad box …)."""

    transient = False


def parse_dicom_destination(destination: str) -> tuple[str, str, int]:
    """ "AE@host:port" → (AE, host, port)."""
    ae_title, _, address = destination.partition("@")
    host, _, port = address.rpartition(":")
    if not ae_title or not host or not port.isdigit():
        raise MessageBuildError(f"malformed DICOM destination {destination!r}")
    return ae_title, host, int(port)


def parse_mllp_destination(destination: str) -> tuple[str, int]:
    host, _, port = destination.rpartition(":")
    if not host or not port.isdigit():
        raise MessageBuildError(f"malformed MLLP destination {destination!r}")
    return host, int(port)


def finding_result(row: RegionFinding) -> RegionFindingResult:
    box = None
    if None not in (row.x1, row.y1, row.x2, row.y2):
        box = PixelBox(row.x1, row.y1, row.x2, row.y2)  # type: ignore[arg-type]
    image = None
    if row.sop_instance_uid:
        image = ImageRef(row.sop_instance_uid, "", row.frame_number or 1)
    return RegionFindingResult(
        region_code=row.region_code,
        region_name_en=row.region_name_en,
        region_name_zh=row.region_name_zh,
        finding_code=row.finding_code,
        finding_name_en=row.finding_name_en,
        finding_name_zh=row.finding_name_zh,
        probability=row.probability,
        image=image,
        box=box,
        sentence_en=row.sentence_en,
        sentence_zh=row.sentence_zh,
        size_mm=row.size_mm,
        critical=row.critical,
        box_flag=row.box_flag,
    )


def _source_headers(session: Session, study: Study, uids: set[str]) -> dict[str, Dataset]:
    storage = get_settings().storage_dir
    headers: dict[str, Dataset] = {}
    for instance in session.scalars(
        select(Instance).where(Instance.study_id == study.id, Instance.sop_instance_uid.in_(uids))
    ):
        headers[instance.sop_instance_uid] = dcmread(
            Path(storage) / instance.file_path, stop_before_pixels=True
        )
    missing = uids - headers.keys()
    if missing:
        raise MessageBuildError(f"{len(missing)} referenced source image(s) are not stored")
    return headers


def _predecessor(session: Session, report: Report) -> PredecessorRef | None:
    """The SR of the previous version that went to the PACS (the draft a signature finalises)."""
    previous = session.scalar(
        select(Report)
        .join(Delivery, Delivery.report_id == Report.id)
        .where(
            Report.study_id == report.study_id,
            Report.version < report.version,
            Delivery.kind == DeliveryKind.SR,
        )
        .order_by(Report.version.desc())
        .limit(1)
    )
    if previous is None:
        return None
    uids = sr_uids(previous.id, previous.version)
    study = session.get(Study, report.study_id)
    assert study is not None
    return PredecessorRef(
        study_instance_uid=study.study_instance_uid,
        series_instance_uid=uids.series_instance_uid,
        sop_instance_uid=uids.sop_instance_uid,
    )


def build_sr(session: Session, report: Report, study: Study) -> Dataset:
    kept = [f for f in report.findings if f.review != FindingReview.REJECTED]
    findings = [finding_result(f) for f in kept]
    headers = _source_headers(
        session, study, {f.image.sop_instance_uid for f in findings if f.image}
    )
    if not headers:  # a report with no grounded finding still needs the study's attributes
        first = session.scalar(select(Instance).where(Instance.study_id == study.id).limit(1))
        if first is None:
            raise MessageBuildError("the study has no stored instance")
        headers = _source_headers(session, study, {first.sop_instance_uid})
    # The ImageRef needs the SOP Class, which lives in the image header, not the finding row.
    for finding in findings:
        if finding.image is not None:
            header = headers[finding.image.sop_instance_uid]
            finding.image = ImageRef(
                finding.image.sop_instance_uid, str(header.SOPClassUID), finding.image.frame
            )
    status = SR_STATUS[ReportStatus(report.status)]
    observer = None
    if status != "draft":
        signer = session.get(User, report.signed_by_user_id) if report.signed_by_user_id else None
        if signer is None or report.signed_at is None:
            raise MessageBuildError("a signed report needs its signer and signing time")
        observer = VerifyingObserver(
            name=signer.dicom_person_name or signer.full_name,
            organization=get_settings().institution_name,
            verified_at=report.signed_at,
        )
    context = SrContext(
        report_id=report.id,
        version=report.version,
        status=status,  # type: ignore[arg-type]
        source_images=list(headers.values()),
        model_name=report.model_name or "unknown",
        model_version=report.model_version or "unknown",
        content_datetime=report.signed_at or report.created_at,
        language=get_settings().report_languages,
        verifying_observer=observer,
        predecessor=_predecessor(session, report) if status != "draft" else None,
    )
    sr_report = SrReport(
        domain=report.domain or "unknown",
        findings=findings,
        findings_text={"en": report.findings_en, "zh": report.findings_zh},
        impression_text={"en": report.impression_en, "zh": report.impression_zh},
    )
    try:
        return build_report_sr(sr_report, context)
    except (ValueError, TypeError) as exc:
        raise MessageBuildError(f"SR not buildable: {exc}") from exc


def build_hl7(session: Session, report: Report, study: Study, control_id: str) -> str:
    signer = session.get(User, report.signed_by_user_id) if report.signed_by_user_id else None
    data = OruInput.from_db(
        study,
        report,
        sr_sop_instance_uid=sr_uids(report.id, report.version).sop_instance_uid,
        signer=signer,
    )
    settings = get_settings()
    languages: tuple[Language, ...] = (
        ("en", "zh") if settings.report_languages == "both" else (settings.report_languages,)
    )
    return build_oru(data, control_id, languages=languages)


def _send(session: Session, delivery: Delivery) -> str:
    """Build and send; returns the acknowledgement code. Raises DeliveryError or StoreError."""
    report = session.scalar(
        select(Report).options(selectinload(Report.findings)).where(Report.id == delivery.report_id)
    )
    assert report is not None
    study = session.get(Study, report.study_id)
    assert study is not None
    settings = get_settings()
    if delivery.kind == DeliveryKind.SR:
        dataset = build_sr(session, report, study)
        ae_title, host, port = parse_dicom_destination(delivery.destination)
        status = store_dataset(
            dataset, ae_title, host, port, calling_ae=settings.listener_ae_title, timeout_s=30.0
        )
        return f"0x{status:04X}"
    message = build_hl7(session, report, study, delivery.message_id)
    host, port = parse_mllp_destination(delivery.destination)
    ack = send_message(message, host=host, port=port, timeout_s=settings.ris_timeout_s)
    return ack.code


def attempt_delivery(engine: Engine, delivery_id: int) -> str:
    factory = sessionmaker(engine, expire_on_commit=False)
    with try_advisory_lock(engine, LockSpace.DELIVERY, delivery_id) as held:
        if not held:
            return "busy"
        with factory() as session:
            delivery = session.get(Delivery, delivery_id)
            if delivery is None:
                return "missing"
            if delivery.state in (DeliveryState.DELIVERED, DeliveryState.FAILED):
                return delivery.state
            error: DeliveryError | StoreError | None = None
            ack_code: str | None = None
            try:
                ack_code = _send(session, delivery)
            except (DeliveryError, StoreError) as exc:
                error = exc
            session.rollback()  # reads only; the outcome is written below, under a row lock

        now = datetime.now(UTC)
        with factory.begin() as session:
            delivery = session.get(Delivery, delivery_id, with_for_update=True)
            assert delivery is not None
            delivery.attempts += 1
            delivery.last_attempt_at = now
            if error is None:
                delivery.state = DeliveryState.DELIVERED
                delivery.delivered_at = now
                delivery.ack_code = ack_code
                delivery.next_attempt_at = None
                delivery.last_error = None
            else:
                decision = after_failure(delivery.attempts, transient=error.transient, now=now)
                delivery.state = decision.state
                delivery.next_attempt_at = decision.next_attempt_at
                delivery.last_error = str(error)[:2000]
                delivery.ack_code = getattr(error, "ack_code", None) or _status_code(error)
            state = delivery.state
        log.info("delivery %s (%s): %s", delivery_id, delivery.kind, state)
        return state


def _status_code(error: DeliveryError | StoreError) -> str | None:
    status = getattr(error, "status", None)
    return f"0x{status:04X}" if isinstance(status, int) else None
