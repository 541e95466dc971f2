"""Feedback export: what radiologists did with each AI finding, as JSON lines for training.

One line per finding of every report version that was signed, taken from the version it was
signed from (the one that still holds rejected findings). No patient name, ID or birth date:
images are referenced by UID, which the training pipeline resolves in the archive.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased, selectinload

from shared.db.models import FindingReview, Report, Study
from shared.reports.domain import RegionFindingResult
from shared.reports.lifecycle import FINAL
from shared.reports.mapping import finding_from_row


def feedback_lines(
    db: Session, since: datetime | None = None, until: datetime | None = None
) -> Iterator[str]:
    signed = aliased(Report)
    query = (
        select(Report, signed, Study.study_instance_uid)
        .join(signed, signed.predecessor_id == Report.id)
        .join(Study, Study.id == Report.study_id)
        .where(signed.status.in_(list(FINAL)))
        .order_by(signed.signed_at, signed.id)
        .options(selectinload(Report.findings))
    )
    if since is not None:
        query = query.where(signed.signed_at >= since)
    if until is not None:
        query = query.where(signed.signed_at < until)
    for reviewed, final, study_uid in db.execute(query).yield_per(100):
        for f in reviewed.findings:
            outcome = FindingReview.ACCEPTED if f.review == FindingReview.PROPOSED else f.review
            grounded = _grounding(finding_from_row(f))
            yield (
                json.dumps(
                    {
                        "study_instance_uid": study_uid,
                        "report_id": final.id,
                        "report_version": final.version,
                        "report_status": final.status,
                        "signed_at": final.signed_at.isoformat() if final.signed_at else None,
                        "domain": reviewed.domain,
                        "model_name": reviewed.model_name,
                        "model_version": reviewed.model_version,
                        "ordinal": f.ordinal,
                        "review": outcome,
                        "explicit": f.review != FindingReview.PROPOSED,
                        **grounded,
                        "probability": f.probability,
                        "proposed": _proposed_box(db, reviewed, f.ordinal),
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )


def _proposed_box(db: Session, reviewed: Report, ordinal: int) -> dict[str, object] | None:
    """What the model first said for this finding (the version-1 draft of the same draft job)."""
    from shared.db.models import RegionFinding

    original = db.execute(
        select(RegionFinding)
        .join(Report, RegionFinding.report_id == Report.id)
        .where(
            Report.study_id == reviewed.study_id,
            Report.draft_job_id == reviewed.draft_job_id,
            Report.author_user_id.is_(None),
            RegionFinding.ordinal == ordinal,
        )
        .order_by(Report.version)
        .limit(1)
    ).scalar()
    return _grounding(finding_from_row(original)) if original is not None else None


def _grounding(finding: RegionFindingResult) -> dict[str, object]:
    """What a finding said and where: region, finding, image and box (source pixels)."""
    box = finding.box
    return {
        "region_code": finding.region_code,
        "finding_code": finding.finding_code,
        "sop_instance_uid": finding.image.sop_instance_uid if finding.image else None,
        "frame": finding.image.frame if finding.image else None,
        "box": [box.x1, box.y1, box.x2, box.y2] if box else None,
    }
