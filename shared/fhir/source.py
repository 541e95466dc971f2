"""Which report version the EHR sees, read from the database into domain objects.

The EHR sees the latest final version (signed or corrected) once there is one — an amendment in
progress is not the report until it is signed — else the latest unsigned one (preliminary).
"""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from shared.db.models import Instance, Report, ReportStatus, Study, User
from shared.reports.domain import ImageRef, ReportVersion
from shared.reports.mapping import report_version

FINAL_STATES = (ReportStatus.SIGNED, ReportStatus.CORRECTED)
UNSIGNED_STATES = (ReportStatus.DRAFT, ReportStatus.EDITED)


def ehr_report(session: Session, study_id: int) -> Report | None:
    for states in (FINAL_STATES, UNSIGNED_STATES):
        report = session.scalar(
            select(Report)
            .where(Report.study_id == study_id, Report.status.in_(list(states)))
            .order_by(Report.version.desc())
            .limit(1)
            .options(selectinload(Report.findings))
        )
        if report is not None:
            return report
    return None


def with_sop_classes(session: Session, study_id: int, version: ReportVersion) -> ReportVersion:
    """Findings' image references with their SOP Class (stored on the instance, not the finding)."""
    uids = {f.image.sop_instance_uid for f in version.findings if f.image}
    classes = dict(
        session.execute(
            select(Instance.sop_instance_uid, Instance.sop_class_uid).where(
                Instance.study_id == study_id, Instance.sop_instance_uid.in_(uids)
            )
        ).all()
    )
    findings = [
        replace(
            f,
            image=ImageRef(
                f.image.sop_instance_uid, classes.get(f.image.sop_instance_uid) or "", f.image.frame
            ),
        )
        if f.image
        else f
        for f in version.findings
    ]
    return replace(version, findings=findings)


def version_for_fhir(session: Session, study: Study, report: Report) -> ReportVersion:
    signer = session.get(User, report.signed_by_user_id) if report.signed_by_user_id else None
    return with_sop_classes(session, study.id, report_version(study, report, signer))


def ehr_version(session: Session, study: Study) -> ReportVersion | None:
    """The version a FHIR read of this study's report returns, or None (no report yet)."""
    report = ehr_report(session, study.id)
    return version_for_fhir(session, study, report) if report is not None else None
