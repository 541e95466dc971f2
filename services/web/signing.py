"""Signing: the report becomes final and goes to the PACS (SR) and the RIS (ORU) again.

In one transaction: a new version (`signed`, or `corrected` when the study was signed before)
with the signer and time, the kept findings (proposed ones count as accepted: the radiologist
signs what the report says), the study marked signed, the delivery rows, the audit row.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from services.web.reports import (
    FINAL_STATUSES,
    ReportConflict,
    compose_texts,
    copy_finding,
    current_report,
    excluded,
    next_version,
    rejected_ordinals,
)
from services.worker.delivery_jobs import create_deliveries
from shared.db.models import (
    FindingReview,
    Report,
    ReportStatus,
    Study,
    StudyState,
    User,
)
from shared.db.outbox import notify_outbox


def sign_report(db: Session, study: Study, user: User, base_version: int) -> Report:
    current = current_report(db, study.id, for_update=True)
    if current is None:
        raise ReportConflict("the study has no report to sign")
    if current.version != base_version:
        raise ReportConflict(
            f"the report is at version {current.version}, not {base_version}; reload it"
        )
    if current.status in FINAL_STATUSES:
        raise ReportConflict("this version is already signed; edit it to make a correction")
    signed_before = db.scalar(
        select(exists().where(Report.study_id == study.id, Report.status.in_(list(FINAL_STATUSES))))
    )
    rejected = rejected_ordinals(current.findings)
    kept = [f for f in current.findings if f.review != FindingReview.REJECTED]
    renumber = {f.ordinal: index for index, f in enumerate(kept)}
    sentences: list[dict[str, Any]] = []
    for sentence in current.sentences or []:
        if excluded(sentence, rejected):
            continue
        copied = dict(sentence)
        copied["finding_ordinals"] = [
            renumber[o] for o in sentence.get("finding_ordinals") or [] if o in renumber
        ]
        sentences.append(copied)
    now = datetime.now(UTC)
    report = next_version(
        current,
        status=ReportStatus.CORRECTED if signed_before else ReportStatus.SIGNED,
        author_user_id=user.id,
        sentences=sentences,
    )
    report.signed_at = now
    report.signed_by_user_id = user.id
    for column, value in compose_texts(sentences, set()).items():
        setattr(report, column, value)
    db.add(report)
    db.flush()
    for finding in kept:
        review = (
            FindingReview.ACCEPTED if finding.review == FindingReview.PROPOSED else finding.review
        )
        db.add(
            copy_finding(
                finding, ordinal=renumber[finding.ordinal], review=review, report_id=report.id
            )
        )
    study.state = StudyState.SIGNED
    study.critical = any(f.critical for f in kept)
    db.flush()
    db.refresh(report, ["findings"])
    create_deliveries(db, report)
    notify_outbox(db)  # the relay publishes the final SR and ORU as soon as this commits
    return report
