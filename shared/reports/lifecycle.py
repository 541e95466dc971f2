"""The report lifecycle: which version may follow which, and the transactions that write them.

    (none) ──model──▶ draft ──radiologist──▶ edited ──sign──▶ signed ──edit──▶ edited ──sign──▶ corrected
                        │  ▲ re-draft (new images)      │                                  (amendment)
                        ▼  │                            ▼
                     superseded ◀───────────────────────┘   (an unsigned version replaced by a re-draft)

Rules (`check_transition` is the one place that decides; migration 0003's triggers guard them):
- a model draft is only ever written while the study has no signed/corrected version; once it
  has, images arriving later flag the study "new images after sign-off" for the radiologist;
- only unsigned versions (draft, edited) are superseded, and only by a newer model draft;
- signing makes `signed`, or `corrected` when a final version exists already; a final version is
  never changed (an amendment is a new version);
- every version that is sent (draft: P, signed: F, corrected: C) gets its deliveries in the same
  transaction (deliveries.py), and superseded messages that have not gone out are cancelled.

Every transaction here first takes the study's lifecycle lock (a transaction-level advisory
lock), so a sign-off racing a re-draft has exactly one outcome in either order.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, selectinload

from shared.db.advisory_locks import lock_study
from shared.db.instance_sets import instance_set_sha256
from shared.db.models import (
    AuditEvent,
    DraftJob,
    DraftJobState,
    Instance,
    Report,
    ReportStatus,
    Series,
    Study,
    StudyState,
    User,
)
from shared.db.outbox import notify_outbox
from shared.reports.deliveries import create_deliveries
from shared.reports.domain import (
    DraftResult,
    RegionFindingResult,
    ReportSentence,
    ReportState,
    ReportVersion,
)
from shared.reports.mapping import finding_row, report_version, sentences_json

FINAL: frozenset[str] = frozenset({ReportStatus.SIGNED, ReportStatus.CORRECTED})
UNSIGNED: frozenset[str] = frozenset({ReportStatus.DRAFT, ReportStatus.EDITED})


class LifecycleViolation(Exception):
    """The requested version does not fit the report's current state (stale base version,
    already signed, a draft after sign-off …). The web answers 409 with this text."""


def check_transition(
    current: ReportState | None, new: ReportState, *, final_exists: bool, by_model: bool
) -> None:
    """The state machine. `current` is the latest non-superseded version's status."""
    if new == "draft":
        if not by_model:
            raise LifecycleViolation("only the model writes drafts")
        if final_exists:
            raise LifecycleViolation("the study has a signed report: no draft may follow it")
        if current not in (None, "draft", "edited"):
            raise LifecycleViolation(f"a draft cannot follow a {current} version")
        return
    if by_model:
        raise LifecycleViolation(f"the model cannot write a {new} version")
    if new == "edited":
        if current is None:
            raise LifecycleViolation("the study has no report to edit")
        return
    if new == "signed":
        if final_exists or current not in ("draft", "edited"):
            raise LifecycleViolation("this report is already signed; edit it to make a correction")
        return
    if new == "corrected":
        if not final_exists or current != "edited":
            raise LifecycleViolation("a correction signs an amendment of a signed report")
        return
    raise LifecycleViolation(f"no version is ever written as {new}")


def current_report(session: Session, study_id: int) -> Report | None:
    """The latest non-superseded version, with its findings loaded."""
    return session.scalar(
        select(Report)
        .where(Report.study_id == study_id, Report.status != ReportStatus.SUPERSEDED)
        .order_by(Report.version.desc())
        .limit(1)
        .options(selectinload(Report.findings))
    )


def final_exists(session: Session, study_id: int) -> bool:
    return bool(
        session.scalar(
            select(exists().where(Report.study_id == study_id, Report.status.in_(list(FINAL))))
        )
    )


def _write_version(
    session: Session,
    study: Study,
    *,
    status: ReportState,
    predecessor: Report | None,
    findings: list[RegionFindingResult],
    sentences: list[ReportSentence],
    **columns: Any,
) -> Report:
    """Insert one version with its findings (ordinal = list index) and derived section texts."""
    rejected = {i for i, f in enumerate(findings) if f.rejected}
    kept = [s for s in sentences if not s.excluded(rejected)]
    texts = {
        f"{section}_{lang}": " ".join(
            t for t in (getattr(s, lang).strip() for s in kept if s.section == section) if t
        )
        for section in ("findings", "impression")
        for lang in ("en", "zh")
    }
    latest = session.scalar(select(func.max(Report.version)).where(Report.study_id == study.id))
    if predecessor is not None:
        for name in ("draft_job_id", "model_name", "model_version", "model_backend", "domain"):
            columns.setdefault(name, getattr(predecessor, name))
    report = Report(
        study_id=study.id,
        version=(latest or 0) + 1,
        status=status,
        predecessor_id=predecessor.id if predecessor else None,
        sentences=sentences_json(sentences),
        **texts,
        **columns,
    )
    session.add(report)
    session.flush()
    session.add_all(finding_row(report.id, i, f) for i, f in enumerate(findings))
    session.flush()
    session.refresh(report, ["findings"])
    if status in ("draft", "signed", "corrected"):
        create_deliveries(session, report)
        notify_outbox(session)  # the relay publishes them as soon as this commits
    return report


def _audit(session: Session, action: str, study: Study, details: dict[str, Any]) -> None:
    session.add(
        AuditEvent(
            action=action,
            object_type="study",
            object_id=str(study.id),
            study_id=study.id,
            details=details,
        )
    )


def store_draft(session: Session, job: DraftJob, result: DraftResult) -> Report | None:
    """The model's draft for a running job, or None when the study was signed meanwhile (the job
    is superseded and, if the job saw images the signed report did not, the study is flagged)."""
    lock_study(session, job.study_id)
    study = session.get(Study, job.study_id, with_for_update=True)
    assert study is not None
    job.finished_at = datetime.now(UTC)
    if final_exists(session, study.id):
        drop_job_after_signoff(
            session, job, study, "the study was signed while this draft was made"
        )
        return None
    if not result.applicable:
        job.state = DraftJobState.NOT_APPLICABLE
        job.reason = result.reason
        study.state = StudyState.NOT_APPLICABLE
        return None
    current = current_report(session, study.id)
    check_transition(
        current.status if current else None,  # type: ignore[arg-type]
        "draft",
        final_exists=False,
        by_model=True,
    )
    # Unsigned earlier versions are superseded (kept, never deleted: they are history).
    for old in session.scalars(
        select(Report).where(Report.study_id == study.id, Report.status.in_(list(UNSIGNED)))
    ):
        old.status = ReportStatus.SUPERSEDED
    session.flush()
    report = _write_version(
        session,
        study,
        status="draft",
        predecessor=None,
        findings=list(result.findings),
        sentences=list(result.sentences),
        draft_job_id=job.id,
        model_name=result.model_name,
        model_version=result.model_version,
        model_backend=result.backend,
        domain=result.domain,
    )
    job.state = DraftJobState.DONE
    job.reason = "; ".join(result.notes)[:2000] or None  # e.g. the model wrote the wrong language
    job.next_attempt_at = None
    study.state = StudyState.DRAFTED
    study.critical = result.critical
    return report


def drop_job_after_signoff(session: Session, job: DraftJob, study: Study, reason: str) -> None:
    """A draft job for a signed study is never run or stored; if it covers images the signed
    report's draft did not, the radiologist is told. Call under the study's lifecycle lock."""
    job.state = DraftJobState.SUPERSEDED
    job.reason = reason
    job.finished_at = datetime.now(UTC)
    signed = session.scalar(
        select(Report)
        .where(Report.study_id == study.id, Report.status.in_(list(FINAL)))
        .order_by(Report.version.desc())
        .limit(1)
    )
    signed_job = (
        session.get(DraftJob, signed.draft_job_id) if signed and signed.draft_job_id else None
    )
    if signed_job is None or signed_job.instance_set_sha256 != job.instance_set_sha256:
        flag_new_images_after_signoff(session, study, draft_job_id=job.id)


def _instance_set(session: Session, study_id: int) -> str:
    """The study's input images now (our own SR/GSPS/KOS excluded), as draft jobs name them."""
    uids = session.scalars(
        select(Instance.sop_instance_uid)
        .join(Series, Instance.series_id == Series.id)
        .where(Instance.study_id == study_id, Series.is_own_output.is_(False))
    )
    return instance_set_sha256(uids)


def flag_new_images_after_signoff(session: Session, study: Study, **details: Any) -> None:
    """Images the signed report does not cover: a worklist badge and an audit row, no draft."""
    if not study.new_images_after_signoff:
        study.new_images_after_signoff = True
        _audit(session, "new_images_after_signoff", study, details)


def _locked_current(session: Session, study: Study, base_version: int) -> Report:
    lock_study(session, study.id)
    session.refresh(study, with_for_update=True)
    current = current_report(session, study.id)
    if current is None:
        raise LifecycleViolation("the study has no report")
    if current.version != base_version:
        raise LifecycleViolation(
            f"the report is at version {current.version}, not {base_version}; reload it"
        )
    return current


def editable_version(session: Session, study: Study, base_version: int) -> ReportVersion:
    """The current version as domain objects, locked for an edit based on `base_version`."""
    current = _locked_current(session, study, base_version)
    return report_version(study, current)


def new_edited_version(
    session: Session,
    study: Study,
    user: User,
    base_version: int,
    findings: list[RegionFindingResult],
    sentences: list[ReportSentence],
) -> Report:
    """A radiologist's edit of the current version (an amendment when that one is final)."""
    current = _locked_current(session, study, base_version)
    check_transition(
        current.status,  # type: ignore[arg-type]
        "edited",
        final_exists=final_exists(session, study.id),
        by_model=False,
    )
    return _write_version(
        session,
        study,
        status="edited",
        predecessor=current,
        findings=findings,
        sentences=sentences,
        author_user_id=user.id,
    )


def sign(session: Session, study: Study, user: User, base_version: int) -> Report:
    """The current version becomes final: `signed`, or `corrected` after an earlier signature.
    Proposed findings count as accepted (the radiologist signs what the report says); rejected
    ones and the sentences grounded only on them are left out, the rest renumbered."""
    current = _locked_current(session, study, base_version)
    had_final = final_exists(session, study.id)
    new_status: ReportState = "corrected" if had_final else "signed"
    check_transition(
        current.status,  # type: ignore[arg-type]
        new_status,
        final_exists=had_final,
        by_model=False,
    )
    version = report_version(study, current)
    renumber: dict[int, int] = {}
    findings: list[RegionFindingResult] = []
    for ordinal, finding in enumerate(version.findings):
        if finding.rejected:
            continue
        renumber[ordinal] = len(findings)
        if finding.review == "proposed":
            finding.review = "accepted"
        findings.append(finding)
    sentences = []
    for sentence in version.sent_sentences:
        sentence.finding_ordinals = [
            renumber[o] for o in sentence.finding_ordinals if o in renumber
        ]
        sentences.append(sentence)
    # Images the signed draft did not see (arrived after it was made, their re-draft not done):
    # the signature cannot cover them silently.
    draft_job = session.get(DraftJob, current.draft_job_id) if current.draft_job_id else None
    if draft_job is not None and draft_job.instance_set_sha256 != _instance_set(session, study.id):
        flag_new_images_after_signoff(session, study, signed_draft_job_id=draft_job.id)
    report = _write_version(
        session,
        study,
        status=new_status,
        predecessor=current,
        findings=findings,
        sentences=sentences,
        author_user_id=user.id,
        signed_at=datetime.now(UTC),
        signed_by_user_id=user.id,
    )
    study.state = StudyState.SIGNED
    study.critical = any(f.critical for f in findings)
    # `new_images_after_signoff` stays up: a signature does not say the new images were looked at
    # (they may have arrived while the page was open); the radiologist acknowledges them.
    study.needs_redraft = False
    return report


def acknowledge_new_images(session: Session, study: Study) -> bool:
    """The radiologist has looked at the images that arrived after sign-off (and amended the
    report or decided not to). False when there was nothing to acknowledge."""
    lock_study(session, study.id)
    session.refresh(study, with_for_update=True)
    if not study.new_images_after_signoff:
        return False
    study.new_images_after_signoff = False
    return True
