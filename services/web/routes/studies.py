"""Study detail, edits (each a new report version), signing, and the vocabulary for pickers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from sqlalchemy import select

from services.web import audit
from services.web.deps import RadiologistDep, RowId, SessionDep, UserDep
from services.web.report_edits import EditRejected, apply_edits
from services.web.schemas import (
    EditRequest,
    FindingOption,
    RegionOption,
    SignRequest,
    StudyDetail,
    StudyStatus,
    Vocabulary,
)
from services.web.study_view import study_detail, study_status
from shared.db.models import Study, User
from shared.reports import lifecycle
from shared.reports.lifecycle import LifecycleViolation
from shared.vocab import load_vocab

router = APIRouter(prefix="/api/v1", tags=["studies"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such study"}}


def load_study(db: SessionDep, study_id: RowId, *, for_update: bool = False) -> Study:
    study = db.scalar(
        select(Study).where(Study.id == study_id).with_for_update(of=Study)
        if for_update
        else select(Study).where(Study.id == study_id)
    )
    if study is None:
        raise HTTPException(status_code=404, detail="no such study")
    return study


@router.get("/studies/{study_id}", response_model=StudyDetail, responses=NOT_FOUND)
def get_study(request: Request, study_id: RowId, db: SessionDep, user: UserDep) -> StudyDetail:
    """Study, current report (sentences + grounded findings), images, versions, deliveries.

    Audited as a view."""
    study = load_study(db, study_id)
    detail = study_detail(db, study, user)
    audit.record(
        db,
        request,
        user,
        "view",
        object_type="report" if detail.report else "study",
        object_id=detail.report.id if detail.report else study.id,
        study_id=study.id,
        details={"version": detail.report.version} if detail.report else None,
    )
    db.commit()
    return detail


@router.get("/studies/{study_id}/status", response_model=StudyStatus, responses=NOT_FOUND)
def get_study_status(study_id: RowId, db: SessionDep, user: UserDep) -> StudyStatus:
    """State, current version and deliveries only (no patient data): what the page polls."""
    study = load_study(db, study_id)
    detail = study_status(db, study)
    return detail


def _edit_or_sign_error(exc: Exception) -> HTTPException:
    if isinstance(exc, LifecycleViolation):
        return HTTPException(status_code=409, detail=str(exc))
    return HTTPException(status_code=422, detail=str(exc))


def _after_change(request: Request, db: SessionDep, study: Study, user: User) -> StudyDetail:
    db.commit()
    db.expire_all()
    return study_detail(db, load_study(db, study.id), user)


@router.post(
    "/studies/{study_id}/report/edits",
    response_model=StudyDetail,
    responses={**NOT_FOUND, 409: {"description": "stale base_version"}},
)
def edit_report(
    request: Request, study_id: RowId, body: EditRequest, db: SessionDep, user: RadiologistDep
) -> StudyDetail:
    """Apply edit operations as one new report version (status `edited`, author = you).

    `base_version` must be the current version (optimistic locking: 409 otherwise)."""
    # No row lock here: the lifecycle takes the study's lock first (one lock order everywhere).
    study = load_study(db, study_id)
    try:
        report = apply_edits(db, study, user, body.base_version, body.operations)
    except (LifecycleViolation, EditRejected) as exc:
        db.rollback()
        raise _edit_or_sign_error(exc) from None
    audit.record(
        db,
        request,
        user,
        "edit",
        object_type="report",
        object_id=report.id,
        study_id=study.id,
        details={
            "version": report.version,
            "operations": [op.op for op in body.operations],
            "ordinals": [getattr(op, "ordinal", None) for op in body.operations],
        },
    )
    return _after_change(request, db, study, user)


@router.post(
    "/studies/{study_id}/report/sign",
    response_model=StudyDetail,
    responses={**NOT_FOUND, 409: {"description": "stale version or already signed"}},
)
def sign(
    request: Request, study_id: RowId, body: SignRequest, db: SessionDep, user: RadiologistDep
) -> StudyDetail:
    """Sign the current version: a `signed` (or `corrected`) version and its SR + ORU deliveries.

    Requires `confirm: true` (the UI asks first)."""
    if not body.confirm:
        raise HTTPException(status_code=422, detail="signing needs confirm: true")
    # No row lock here: the lifecycle takes the study's lock first (one lock order everywhere).
    study = load_study(db, study_id)
    try:
        report = lifecycle.sign(db, study, user, body.base_version)
    except LifecycleViolation as exc:
        db.rollback()
        raise _edit_or_sign_error(exc) from None
    audit.record(
        db,
        request,
        user,
        "sign",
        object_type="report",
        object_id=report.id,
        study_id=study.id,
        details={"version": report.version, "status": report.status},
    )
    return _after_change(request, db, study, user)


@router.post(
    "/studies/{study_id}/new-images/acknowledge",
    response_model=StudyDetail,
    responses={**NOT_FOUND, 409: {"description": "no new images to acknowledge"}},
)
def acknowledge_new_images(
    request: Request, study_id: RowId, db: SessionDep, user: RadiologistDep
) -> StudyDetail:
    """The images that arrived after sign-off were looked at: the badge goes (audited). Amend
    the report first if they change it; no draft is ever made for them."""
    study = load_study(db, study_id)
    if not lifecycle.acknowledge_new_images(db, study):
        db.rollback()
        raise HTTPException(status_code=409, detail="no new images after sign-off to acknowledge")
    audit.record(db, request, user, "acknowledge_new_images", object_type="study",
                 object_id=study.id, study_id=study.id)  # fmt: skip
    return _after_change(request, db, study, user)


@router.get("/vocabulary", response_model=Vocabulary, tags=["vocabulary"])
def vocabulary(_: UserDep) -> Vocabulary:
    """Region and finding names (EN + ZH) for the Locate picker and the relabel menu."""
    vocab = load_vocab()
    return Vocabulary(
        regions=[
            RegionOption(
                code=r.code,
                en=r.en,
                zh=r.zh,
                synonyms=[*r.synonyms_en, *r.synonyms_zh],
                domains=list(r.domains),
            )
            for r in vocab.regions
        ],
        findings=[
            FindingOption(
                code=f.code, en=f.en, zh=f.zh, regions=list(f.regions), domains=list(f.domains)
            )
            for f in vocab.findings
        ],
    )
