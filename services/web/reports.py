"""Report versions as the review UI sees them: the current version, its sentences and texts.

A report's narrative is its list of grounded sentences; the four text columns are derived from
it. A sentence whose findings were all rejected is *excluded*: kept in the version (undoing the
rejection brings it back) but left out of the texts, the SR and the ORU.
"""

from __future__ import annotations

import copy
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from shared.db.models import FindingReview, RegionFinding, Report, ReportStatus

FINAL_STATUSES = {ReportStatus.SIGNED.value, ReportStatus.CORRECTED.value}
SECTIONS = ("findings", "impression")


class ReportConflict(Exception):
    """The request does not fit the report's current state (stale version, already signed…)."""


class EditRejected(ValueError):
    """An edit operation that can't apply (unknown ordinal, bad code, box off the image)."""


def current_report(db: Session, study_id: int, *, for_update: bool = False) -> Report | None:
    """The highest non-superseded version, with its findings loaded."""
    query = (
        select(Report)
        .where(Report.study_id == study_id, Report.status != ReportStatus.SUPERSEDED)
        .order_by(Report.version.desc())
        .limit(1)
        .options(selectinload(Report.findings))
    )
    if for_update:
        query = query.with_for_update(of=Report)
    return db.scalar(query)


def excluded(sentence: dict[str, Any], rejected: set[int]) -> bool:
    ordinals = sentence.get("finding_ordinals") or []
    return bool(ordinals) and all(o in rejected for o in ordinals)


def rejected_ordinals(findings: list[RegionFinding]) -> set[int]:
    return {f.ordinal for f in findings if f.review == FindingReview.REJECTED}


def compose_texts(sentences: list[dict[str, Any]], rejected: set[int]) -> dict[str, str]:
    """findings_en/zh, impression_en/zh from the sentences that are not excluded."""
    texts: dict[str, str] = {}
    for section in SECTIONS:
        for lang in ("en", "zh"):
            parts = [
                str(s.get(lang) or "").strip()
                for s in sentences
                if s.get("section") == section and not excluded(s, rejected)
            ]
            texts[f"{section}_{lang}"] = " ".join(p for p in parts if p)
    return texts


def copy_finding(finding: RegionFinding, **changes: Any) -> RegionFinding:
    columns = (
        "ordinal region_code region_name_en region_name_zh finding_code finding_name_en "
        "finding_name_zh probability critical size_mm sop_instance_uid frame_number x1 y1 x2 y2 "
        "box_flag sentence_en sentence_zh review"
    ).split()
    values = {c: getattr(finding, c) for c in columns}
    values.update(changes)
    return RegionFinding(**values)


def next_version(
    current: Report, *, status: ReportStatus, author_user_id: int, sentences: list[dict[str, Any]]
) -> Report:
    """A new version that carries everything of `current` forward (texts set by the caller)."""
    return Report(
        study_id=current.study_id,
        draft_job_id=current.draft_job_id,
        version=current.version + 1,
        status=status,
        predecessor_id=current.id,
        author_user_id=author_user_id,
        model_name=current.model_name,
        model_version=current.model_version,
        model_backend=current.model_backend,
        domain=current.domain,
        sentences=copy.deepcopy(sentences),
    )
