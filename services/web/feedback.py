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
from shared.reports.lifecycle import FINAL


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
                        "region_code": f.region_code,
                        "finding_code": f.finding_code,
                        "probability": f.probability,
                        "sop_instance_uid": f.sop_instance_uid,
                        "frame": f.frame_number,
                        "box": [f.x1, f.y1, f.x2, f.y2] if f.x1 is not None else None,
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
    if original is None:
        return None
    return {
        "region_code": original.region_code,
        "finding_code": original.finding_code,
        "sop_instance_uid": original.sop_instance_uid,
        "frame": original.frame_number,
        "box": [original.x1, original.y1, original.x2, original.y2]
        if original.x1 is not None
        else None,
    }
