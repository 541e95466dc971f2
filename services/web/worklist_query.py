"""The worklist query: filters, critical-first ordering, one page, and what each row shows.

One query pages the studies; three more (series modalities, current reports, deliveries) fetch
what the page's rows need by study id, so the cost stays flat however many studies exist.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Literal, get_args

from sqlalchemy import ColumnElement, Exists, ScalarSelect, Select, and_, exists, func, or_, select
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.orm import Session

from services.web.schemas import Worklist, WorklistItem
from shared.db.models import (
    Delivery,
    DeliveryState,
    Report,
    ReportStatus,
    Series,
    Study,
    StudyState,
)
from shared.vocab import load_vocab

# The one status vocabulary a radiologist sees (display_status); the API's filter is typed by it.
DisplayStatus = Literal[
    "receiving",
    "drafting",
    "draft_ready",
    "in_review",
    "not_applicable",
    "signed",
    "failed",
    "delivery_failed",
]
STATUSES: tuple[str, ...] = get_args(DisplayStatus)
MAX_PAGE_SIZE = 200


@dataclass(frozen=True)
class WorklistFilter:
    status: str | None = None
    modality: str | None = None
    domain: str | None = None
    q: str | None = None
    page: int = 1
    page_size: int = 50


def display_status(state: str, report_status: str | None, delivery_failed: bool) -> str:
    """The one status word a radiologist sees for a study."""
    if delivery_failed:
        return "delivery_failed"
    if state in (StudyState.RECEIVING, StudyState.STABLE):
        return "receiving"
    if state == StudyState.DRAFTED:
        return "in_review" if report_status == ReportStatus.EDITED else "draft_ready"
    if state == StudyState.SIGNED:
        return "in_review" if report_status == ReportStatus.EDITED else "signed"
    return state  # drafting, not_applicable, failed


def _failed_delivery_exists() -> Exists:
    return exists(
        select(Delivery.id)
        .join(Report, Delivery.report_id == Report.id)
        .where(Report.study_id == Study.id, Delivery.state == DeliveryState.FAILED)
    )


def _escape_like(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _current_report_status() -> ScalarSelect:
    """The status of the study's newest report version (what display_status reads)."""
    return (
        select(Report.status)
        .where(Report.study_id == Study.id, Report.status != ReportStatus.SUPERSEDED)
        .order_by(Report.version.desc())
        .limit(1)
        .scalar_subquery()
    )


def _status_condition(status: str) -> ColumnElement[bool]:
    """display_status in SQL: a filter returns exactly the rows showing that status."""
    failed = _failed_delivery_exists()
    if status == "delivery_failed":
        return failed
    current = _current_report_status()
    edited = current == ReportStatus.EDITED
    not_edited = current.is_distinct_from(ReportStatus.EDITED)  # no report yet counts too
    by_state: dict[str, ColumnElement[bool]] = {
        "receiving": Study.state.in_([StudyState.RECEIVING, StudyState.STABLE]),
        "draft_ready": and_(Study.state == StudyState.DRAFTED, not_edited),
        "in_review": and_(Study.state.in_([StudyState.DRAFTED, StudyState.SIGNED]), edited),
        "signed": and_(Study.state == StudyState.SIGNED, not_edited),
    }
    return and_(by_state.get(status, Study.state == status), ~failed)


def _filtered(query: Select, f: WorklistFilter) -> Select:
    if f.status is not None:
        query = query.where(_status_condition(f.status))
    if f.modality:
        query = query.where(
            exists(
                select(Series.id).where(
                    Series.study_id == Study.id,
                    Series.modality == f.modality,
                    Series.is_own_output.is_(False),
                )
            )
        )
    if f.domain:
        query = query.where(
            exists(
                select(Report.id).where(
                    Report.study_id == Study.id,
                    Report.domain == f.domain,
                    Report.status != ReportStatus.SUPERSEDED,
                )
            )
        )
    if f.q:
        # Every word must match one of the fields; DICOM names separate parts with '^'.
        for term in f.q.replace("^", " ").split()[:8]:
            pattern = f"%{_escape_like(term)}%"
            query = query.where(
                or_(
                    func.replace(Study.patient_name, "^", " ").ilike(pattern, escape="\\"),
                    Study.patient_id.ilike(pattern, escape="\\"),
                    Study.accession_number.ilike(pattern, escape="\\"),
                )
            )
    return query


def load_worklist(db: Session, f: WorklistFilter) -> Worklist:
    total = db.scalar(_filtered(select(func.count()).select_from(Study), f)) or 0
    studies = list(
        db.scalars(
            _filtered(select(Study), f)
            .order_by(Study.critical.desc(), Study.first_received_at.desc(), Study.id.desc())
            .limit(f.page_size)
            .offset((f.page - 1) * f.page_size)
        )
    )
    ids = [s.id for s in studies]
    modalities: dict[int, list[str]] = defaultdict(list)
    reports: dict[int, tuple[int, int, str, str | None]] = {}
    delivery_states: dict[int, list[str]] = defaultdict(list)
    failed: set[int] = set()
    if ids:
        for study_id, modality in db.execute(
            select(Series.study_id, Series.modality)
            .where(
                Series.study_id.in_(ids),
                Series.is_own_output.is_(False),
                Series.modality.is_not(None),
            )
            .distinct()
        ):
            if modality:
                modalities[study_id].append(modality)
        for report_id, study_id, version, status, domain in db.execute(
            select(Report.id, Report.study_id, Report.version, Report.status, Report.domain)
            .where(Report.study_id.in_(ids), Report.status != ReportStatus.SUPERSEDED)
            .order_by(Report.study_id, Report.version.desc())
            .ext(distinct_on(Report.study_id))
        ):
            reports[study_id] = (report_id, version, status, domain)
        for study_id, report_id, state in db.execute(
            select(Report.study_id, Delivery.report_id, Delivery.state)
            .join(Report, Delivery.report_id == Report.id)
            .where(Report.study_id.in_(ids))
        ):
            if state == DeliveryState.FAILED:
                failed.add(study_id)
            current = reports.get(study_id)
            if current is not None and report_id == current[0]:
                delivery_states[study_id].append(state)
    vocab = load_vocab()
    domain_names = {d.code: d for d in vocab.domains}
    items = []
    for study in studies:
        report = reports.get(study.id)
        domain = report[3] if report else None
        states = delivery_states.get(study.id, [])
        delivery = None
        if study.id in failed:
            delivery = "failed"
        elif states:
            delivery = "delivered" if all(s == "delivered" for s in states) else "pending"
        items.append(
            WorklistItem(
                id=study.id,
                patient_name=study.patient_name,
                patient_id=study.patient_id,
                patient_sex=study.patient_sex,
                patient_birth_date=study.patient_birth_date,
                accession_number=study.accession_number,
                study_description=study.study_description,
                study_date=study.study_date,
                modalities=sorted(modalities.get(study.id, [])),
                domain=domain,
                domain_en=domain_names[domain].en if domain in domain_names else None,
                domain_zh=domain_names[domain].zh if domain in domain_names else None,
                received_at=study.first_received_at,
                state=study.state,
                status=display_status(
                    study.state, report[2] if report else None, study.id in failed
                ),
                critical=study.critical,
                new_images_after_signoff=study.new_images_after_signoff,
                conflicting_instances=study.conflicting_instances,
                report_version=report[1] if report else None,
                report_status=report[2] if report else None,
                delivery=delivery,
            )
        )
    return Worklist(total=total, page=f.page, page_size=f.page_size, items=items)
