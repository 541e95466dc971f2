"""One delivery attempt: claim it, build the message from the report version, send, record.

The row is the source of truth: what to send (report version), where (destination recorded at
creation), under which ID (SR SOP Instance UID / HL7 control ID derived from the version), how
often it was tried and when to try again. The order rules, the lease and the recording of every
outcome live in shared.reports.deliveries; this module builds and sends. Only a DIMSE success or
an HL7 `AA`/`CA` naming our control ID marks it delivered.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import UTC, datetime

from pydicom import Dataset, dcmread
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from services.worker.fhir_push import push_version
from shared.config import get_settings
from shared.db.advisory_locks import LockSpace, try_advisory_lock
from shared.db.instance_inputs import stored_file
from shared.db.models import Delivery, DeliveryKind, DeliveryState, Instance, Report, Study, User
from shared.delivery_policy import DeliveryError
from shared.dicom.gsps_builder import (
    build_presentation_states,
    has_window,
    presentation_state_uids,
)
from shared.dicom.kos_builder import build_key_object_selection
from shared.dicom.presentation_common import key_findings
from shared.dicom.scu import StoreError, pacs_tls_context, store_dataset
from shared.dicom.sr_builder import build_report_sr
from shared.dicom.sr_content import (
    PredecessorRef,
    ReportStatusName,
    SrContext,
    SrReport,
    VerifyingObserver,
    languages_of,
)
from shared.hl7.mllp import ris_tls_context, send_message
from shared.hl7.oru import OruInput, build_oru
from shared.reports import deliveries
from shared.reports.domain import ImageRef, Language, ReportVersion, ResultStatus
from shared.reports.mapping import report_version
from shared.reports.message_ids import kos_uids, sr_uids
from shared.storage.instance_reader import instance_reader

log = logging.getLogger(__name__)

PACS_KINDS = (DeliveryKind.SR, DeliveryKind.GSPS, DeliveryKind.KOS)
SR_STATUS: dict[ResultStatus, ReportStatusName] = {"P": "draft", "F": "final", "C": "corrected"}


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


def _source_headers(
    session: Session, study_id: int, uids: set[str], *, pixels: bool = False
) -> dict[str, Dataset]:
    reader = instance_reader(get_settings().storage_dir)  # the file may be on another node
    headers: dict[str, Dataset] = {}
    for instance in session.scalars(
        select(Instance).where(Instance.study_id == study_id, Instance.sop_instance_uid.in_(uids))
    ):
        headers[instance.sop_instance_uid] = dcmread(
            reader.local_path(stored_file(instance)), stop_before_pixels=not pixels
        )
    missing = uids - headers.keys()
    if missing:
        raise MessageBuildError(f"{len(missing)} referenced source image(s) are not stored")
    return headers


def _predecessor(session: Session, version: ReportVersion, study_id: int) -> PredecessorRef | None:
    """The SR of the previous version that went to the PACS (the draft a signature finalises)."""
    previous = session.execute(
        select(Delivery.report_id, Delivery.report_version)
        .where(
            Delivery.study_id == study_id,
            Delivery.report_version < version.version,
            Delivery.kind == DeliveryKind.SR,
            Delivery.state == DeliveryState.DELIVERED,
        )
        .order_by(Delivery.report_version.desc())
        .limit(1)
    ).first()
    if previous is None:
        return None
    uids = sr_uids(previous.report_id, previous.report_version)
    return PredecessorRef(
        study_instance_uid=version.study.study_instance_uid,
        series_instance_uid=uids.series_instance_uid,
        sop_instance_uid=uids.sop_instance_uid,
    )


def build_sr(session: Session, version: ReportVersion, study_id: int) -> Dataset:
    findings = version.sent_findings
    headers = _source_headers(
        session, study_id, {f.image.sop_instance_uid for f in findings if f.image}
    )
    if not headers:  # a report with no grounded finding still needs the study's attributes
        first = session.scalar(select(Instance).where(Instance.study_id == study_id).limit(1))
        if first is None:
            raise MessageBuildError("the study has no stored instance")
        headers = _source_headers(session, study_id, {first.sop_instance_uid})
    # The ImageRef needs the SOP Class, which lives in the image header, not the finding row.
    for finding in findings:
        if finding.image is not None:
            header = headers[finding.image.sop_instance_uid]
            finding.image = ImageRef(
                finding.image.sop_instance_uid, str(header.SOPClassUID), finding.image.frame
            )
    status = SR_STATUS[version.result_status]
    observer = None
    if version.is_final:
        if version.signer is None:
            raise MessageBuildError("a signed report needs its signer and signing time")
        observer = VerifyingObserver(
            name=version.signer.name_pn,
            organization=get_settings().institution_name,
            verified_at=version.signer.signed_at,
        )
    context = SrContext(
        report_id=version.report_id,
        version=version.version,
        status=status,
        source_images=list(headers.values()),
        model_name=version.model_name,
        model_version=version.model_version,
        content_datetime=version.signer.signed_at if version.signer else version.created_at,
        language=get_settings().report_languages,
        verifying_observer=observer,
        predecessor=_predecessor(session, version, study_id) if version.is_final else None,
    )
    sr_report = SrReport(
        domain=version.domain,
        findings=findings,
        findings_text={lang: version.section_text("findings", lang) for lang in ("en", "zh")},
        impression_text={lang: version.section_text("impression", lang) for lang in ("en", "zh")},
    )
    try:
        return build_report_sr(sr_report, context)
    except (ValueError, TypeError) as exc:
        raise MessageBuildError(f"SR not buildable: {exc}") from exc


def build_pacs_objects(
    session: Session, delivery: Delivery, version: ReportVersion, study_id: int
) -> list[Dataset]:
    """What one PACS delivery stores: the SR, the presentation states (one per key image), or
    the KOS (pointing at the presentation states when this version sends them too)."""
    if delivery.kind == DeliveryKind.SR:
        return [build_sr(session, version, study_id)]
    settings = get_settings()
    languages = languages_of(settings.report_languages)
    key_uids = {f.image.sop_instance_uid for f in key_findings(version) if f.image}
    images = _source_headers(session, study_id, key_uids)
    try:
        states: list[Dataset] = []
        if delivery.kind == DeliveryKind.GSPS or _sends(session, delivery, DeliveryKind.GSPS):
            windowless = {uid for uid, image in images.items() if not has_window(image)}
            with_pixels = {**images, **_source_headers(session, study_id, windowless, pixels=True)}
            states = list(
                build_presentation_states(
                    version,
                    with_pixels.values(),
                    languages=languages,
                    institution_name=settings.institution_name,
                )
            )
        if delivery.kind == DeliveryKind.GSPS:
            return states
        kos = build_key_object_selection(
            version,
            images.values(),
            presentation_states=states,
            languages=languages,
            institution_name=settings.institution_name,
        )
        return [kos]
    except (ValueError, TypeError) as exc:
        raise MessageBuildError(f"{delivery.kind.upper()} not buildable: {exc}") from exc


def _sends(session: Session, delivery: Delivery, kind: DeliveryKind) -> bool:
    """Does the same version send `kind` to the same destination?"""
    return (
        session.scalar(
            select(Delivery.id).where(
                Delivery.report_id == delivery.report_id,
                Delivery.destination == delivery.destination,
                Delivery.kind == kind,
            )
        )
        is not None
    )


def build_hl7(
    version: ReportVersion, control_id: str, pacs_kinds: Collection[str] = (DeliveryKind.SR,)
) -> str:
    """The ORU; its OBX point at the objects of `pacs_kinds` the version sends to the PACS."""
    report_id, number = version.report_id, version.version
    data = OruInput.from_report(
        version,
        sr_sop_instance_uid=(
            sr_uids(report_id, number).sop_instance_uid if DeliveryKind.SR in pacs_kinds else None
        ),
        gsps_sop_instance_uids=(
            tuple(presentation_state_uids(version)) if DeliveryKind.GSPS in pacs_kinds else ()
        ),
        kos_sop_instance_uid=(
            kos_uids(report_id, number).sop_instance_uid if DeliveryKind.KOS in pacs_kinds else None
        ),
    )
    settings = get_settings()
    languages: tuple[Language, ...] = (
        ("en", "zh") if settings.report_languages == "both" else (settings.report_languages,)
    )
    return build_oru(data, control_id, header=settings.oru_header(), languages=languages)


def load_version(session: Session, report_id: int) -> tuple[ReportVersion, int]:
    """The report version a delivery sends, and its study id."""
    report = session.scalar(
        select(Report).options(selectinload(Report.findings)).where(Report.id == report_id)
    )
    assert report is not None
    study = session.get(Study, report.study_id)
    assert study is not None
    signer = session.get(User, report.signed_by_user_id) if report.signed_by_user_id else None
    return report_version(study, report, signer), study.id


def _send(session: Session, delivery: Delivery) -> tuple[str, str | None]:
    """Build and send; returns (acknowledgement code, its text). Raises on any failure."""
    version, study_id = load_version(session, delivery.report_id)
    settings = get_settings()
    if delivery.kind in PACS_KINDS:
        datasets = build_pacs_objects(session, delivery, version, study_id)
        ae_title, host, port = parse_dicom_destination(delivery.destination)
        statuses = [
            store_dataset(
                dataset,
                ae_title,
                host,
                port,
                calling_ae=settings.listener_ae_title,
                timeout_s=30.0,
                tls_context=pacs_tls_context(settings),
                keep_warm=True,  # SR, GSPS and KOS of a study go over one association
            )
            for dataset in datasets  # same UIDs on every attempt: a re-sent one replaces itself
        ]
        detail = f"{len(datasets)} instances stored" if len(datasets) > 1 else None
        return f"0x{max(statuses):04X}", detail
    if delivery.kind == DeliveryKind.FHIR:
        return push_version(session, version, study_id, delivery.destination)
    sent_to_pacs = session.scalars(
        select(Delivery.kind).where(
            Delivery.report_id == delivery.report_id, Delivery.kind.in_(PACS_KINDS)
        )
    ).all()
    message = build_hl7(version, delivery.message_id, sent_to_pacs)
    host, port = parse_mllp_destination(delivery.destination)
    ack = send_message(
        message,
        host=host,
        port=port,
        timeout_s=settings.ris_timeout_s,
        tls_context=ris_tls_context(settings),
    )
    return ack.code, ack.text or None


def attempt_delivery(engine: Engine, delivery_id: int) -> str:
    """One attempt: claim (order rules, lease), send, record the outcome — whatever happens."""
    factory = sessionmaker(engine, expire_on_commit=False)
    with try_advisory_lock(engine, LockSpace.DELIVERY, delivery_id) as held:
        if not held:
            return "busy"
        with factory.begin() as session:
            claimed = deliveries.claim(session, delivery_id, datetime.now(UTC))
        if claimed != "claimed":
            return claimed
        error: BaseException | None = None
        ack_code = ack_text = None
        with factory() as session:
            delivery = session.get(Delivery, delivery_id)
            assert delivery is not None
            try:
                ack_code, ack_text = _send(session, delivery)
            except Exception as exc:  # every outcome is recorded: nothing is left in flight
                error = exc
                if not isinstance(exc, DeliveryError | StoreError):
                    log.exception("delivery %s: unexpected error", delivery_id)
            kind = delivery.kind
            session.rollback()  # reads only; the outcome is written below, under a row lock
        with factory.begin() as session:
            state = deliveries.record_outcome(
                session,
                delivery_id,
                datetime.now(UTC),
                ack_code=ack_code,
                ack_detail=ack_text,
                error=error,
            )
        log.info("delivery %s (%s): %s", delivery_id, kind, state)
        return state
