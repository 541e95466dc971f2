"""The study detail the review page shows: study, current report, images, versions, deliveries."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.web import rendering
from services.web.schemas import (
    Box,
    DeliveryOut,
    FindingOut,
    ImageOut,
    JobOut,
    Permissions,
    PersonOut,
    ReportOut,
    SentenceOut,
    SeriesOut,
    StudyDetail,
    StudyOut,
    StudyStatus,
    VersionOut,
)
from services.web.worklist_query import display_status
from shared.db.models import (
    Delivery,
    DeliveryState,
    DraftJob,
    Instance,
    Report,
    ReportStatus,
    Series,
    Study,
    User,
    UserRole,
)
from shared.reports.domain import RegionFindingResult
from shared.reports.lifecycle import current_report
from shared.reports.mapping import report_version
from shared.vocab import VocabError, finding_label, load_vocab
from shared.vocab.loader import Language


def _person(users: dict[int, User], user_id: int | None) -> PersonOut | None:
    user = users.get(user_id) if user_id is not None else None
    return PersonOut(id=user.id, username=user.username, full_name=user.full_name) if user else None


def _label(f: RegionFindingResult, lang: Language) -> str:
    """The vocabulary's label; a version stored under codes the vocabulary no longer knows keeps
    the names it was stored with."""
    try:
        return finding_label(f.finding_code, f.region_code, lang)
    except VocabError:
        region = f.region_name_zh if lang == "zh" else f.region_name_en
        name = f.finding_name_zh if lang == "zh" else f.finding_name_en
        return f"{region} — {name}" if name else region


def finding_out(ordinal: int, f: RegionFindingResult) -> FindingOut:
    box = Box(x1=f.box.x1, y1=f.box.y1, x2=f.box.x2, y2=f.box.y2) if f.box else None
    return FindingOut(
        ordinal=ordinal,
        region_code=f.region_code,
        region_en=f.region_name_en,
        region_zh=f.region_name_zh,
        finding_code=f.finding_code,
        finding_en=f.finding_name_en,
        finding_zh=f.finding_name_zh,
        label_en=_label(f, "en"),
        label_zh=_label(f, "zh"),
        probability=f.probability,
        critical=f.critical,
        size_mm=f.size_mm,
        sop_instance_uid=f.image.sop_instance_uid if f.image else None,
        frame=f.image.frame if f.image else None,
        box=box,
        box_flag=f.box_flag,
        sentence_en=f.sentence_en,
        sentence_zh=f.sentence_zh,
        review=f.review,
    )


def _report_out(study: Study, report: Report, users: dict[int, User]) -> ReportOut:
    domains = {d.code: d for d in load_vocab().domains}
    domain = domains.get(report.domain or "")
    version = report_version(study, report)
    rejected = version.rejected_ordinals
    return ReportOut(
        id=report.id,
        version=report.version,
        status=report.status,
        final=version.is_final,
        domain=report.domain,
        domain_en=domain.en if domain else None,
        domain_zh=domain.zh if domain else None,
        model_name=report.model_name,
        model_version=report.model_version,
        author=_person(users, report.author_user_id),
        created_at=report.created_at,
        signed_at=report.signed_at,
        signed_by=_person(users, report.signed_by_user_id),
        findings_en=report.findings_en,
        findings_zh=report.findings_zh,
        impression_en=report.impression_en,
        impression_zh=report.impression_zh,
        sentences=[
            SentenceOut(
                index=i,
                section=s.section,
                en=s.en,
                zh=s.zh,
                finding_ordinals=s.finding_ordinals,
                excluded=s.excluded(rejected),
                stale=s.stale,
            )
            for i, s in enumerate(version.sentences)
        ],
        findings=[finding_out(i, f) for i, f in enumerate(version.findings)],
    )


def _series(db: Session, study_id: int) -> list[SeriesOut]:
    rows = db.execute(
        select(Series, Instance)
        .join(Instance, Instance.series_id == Series.id)
        .where(
            Series.study_id == study_id,
            Series.is_own_output.is_(False),
            Instance.rows.is_not(None),
        )
        .order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
    ).all()
    out: dict[int, SeriesOut] = {}
    for series, instance in rows:
        entry = out.get(series.id)
        if entry is None:
            entry = out[series.id] = SeriesOut(
                series_instance_uid=series.series_instance_uid,
                modality=series.modality,
                series_number=series.series_number,
                description=series.series_description,
                images=[],
            )
        entry.images.append(
            ImageOut(
                sop_instance_uid=instance.sop_instance_uid,
                instance_number=instance.instance_number,
                frames=instance.number_of_frames or 1,
                rows=instance.rows,
                columns=instance.columns,
            )
        )
    return list(out.values())


def study_out(study: Study, report_status: str | None, delivery_failed: bool) -> StudyOut:
    return StudyOut(
        id=study.id,
        study_instance_uid=study.study_instance_uid,
        patient_name=study.patient_name,
        patient_id=study.patient_id,
        patient_birth_date=study.patient_birth_date,
        patient_sex=study.patient_sex,
        accession_number=study.accession_number,
        study_date=study.study_date,
        study_description=study.study_description,
        state=study.state,
        status=display_status(study.state, report_status, delivery_failed),
        critical=study.critical,
        new_images_after_signoff=study.new_images_after_signoff,
        conflicting_instances=study.conflicting_instances,
        received_at=study.first_received_at,
    )


def _deliveries(db: Session, study_id: int) -> list[DeliveryOut]:
    rows = db.execute(
        select(Delivery, Report.version, Report.status)
        .join(Report, Delivery.report_id == Report.id)
        .where(Report.study_id == study_id)
        .order_by(Report.version.desc(), Delivery.kind.desc())
    )
    return [delivery_out(d, status) for d, _, status in rows]


def delivery_out(d: Delivery, report_status: str) -> DeliveryOut:
    return DeliveryOut(
        id=d.id,
        kind=d.kind,
        state=d.state,
        report_version=d.report_version,
        report_status=report_status,
        destination=d.destination,
        attempts=d.attempts,
        last_error=d.last_error,
        ack_code=d.ack_code,
        delivered_at=d.delivered_at,
        created_at=d.created_at,
    )


def study_status(db: Session, study: Study) -> StudyStatus:
    current = db.execute(
        select(Report.version, Report.status)
        .where(Report.study_id == study.id, Report.status != ReportStatus.SUPERSEDED)
        .order_by(Report.version.desc())
        .limit(1)
    ).first()
    deliveries = _deliveries(db, study.id)
    failed = any(d.state == DeliveryState.FAILED for d in deliveries)
    return StudyStatus(
        state=study.state,
        status=display_status(study.state, current[1] if current else None, failed),
        report_version=current[0] if current else None,
        deliveries=deliveries,
    )


def study_detail(db: Session, study: Study, viewer: User) -> StudyDetail:
    report = current_report(db, study.id)
    versions = list(
        db.execute(
            select(
                Report.id, Report.version, Report.status, Report.author_user_id, Report.created_at
            )
            .where(Report.study_id == study.id)
            .order_by(Report.version.desc())
        )
    )
    deliveries = _deliveries(db, study.id)
    user_ids = {v.author_user_id for v in versions if v.author_user_id}
    if report is not None and report.signed_by_user_id:
        user_ids.add(report.signed_by_user_id)
    users = (
        {u.id: u for u in db.scalars(select(User).where(User.id.in_(user_ids)))} if user_ids else {}
    )
    job = db.scalar(
        select(DraftJob).where(DraftJob.study_id == study.id).order_by(DraftJob.id.desc()).limit(1)
    )
    delivery_failed = any(d.state == DeliveryState.FAILED for d in deliveries)
    modality = next(iter(s.modality for s in _series_modalities(db, study.id)), None)
    radiologist = viewer.role == UserRole.RADIOLOGIST
    return StudyDetail(
        study=study_out(study, report.status if report else None, delivery_failed),
        job=JobOut(
            id=job.id,
            state=job.state,
            reason=job.reason,
            created_at=job.created_at,
            finished_at=job.finished_at,
        )
        if job
        else None,
        report=_report_out(study, report, users) if report else None,
        versions=[
            VersionOut(
                id=v.id,
                version=v.version,
                status=v.status,
                author=users[v.author_user_id].username if v.author_user_id in users else None,
                created_at=v.created_at,
            )
            for v in versions
        ],
        series=_series(db, study.id),
        deliveries=deliveries,
        presets=rendering.presets_for(modality),
        permissions=Permissions(
            edit=radiologist and report is not None,
            sign=radiologist
            and report is not None
            and report.status in (ReportStatus.DRAFT, ReportStatus.EDITED),
            retry=viewer.role == UserRole.ADMIN,
        ),
    )


def _series_modalities(db: Session, study_id: int) -> list[Series]:
    return list(
        db.scalars(
            select(Series)
            .where(Series.study_id == study_id, Series.is_own_output.is_(False))
            .order_by(Series.series_number, Series.id)
        )
    )
