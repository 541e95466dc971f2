"""Admin: audit log, delivery retry, users, feedback export. Admin role only."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.web import audit, sessions
from services.web.deps import AdminDep, RowId, SessionDep
from services.web.feedback import feedback_lines
from services.web.password_policy import PasswordRejected
from services.web.passwords import hash_new_password
from services.web.schemas import (
    AuditOut,
    AuditPage,
    CreateUserRequest,
    DeliveryOut,
    JobOut,
    UserOut,
)
from services.web.study_view import delivery_out
from shared.db.models import (
    AuditEvent,
    Delivery,
    DraftJob,
    DraftJobState,
    Report,
    Study,
    StudyState,
    User,
)
from shared.db.outbox import notify_outbox
from shared.db.session import get_engine
from shared.reports import deliveries

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


def audit_page(
    db: SessionDep,
    *,
    action: str | None,
    username: str | None,
    study_id: int | None,
    page: int,
    page_size: int,
) -> AuditPage:
    query = select(AuditEvent)
    if action:
        query = query.where(AuditEvent.action == action)
    if username:
        query = query.where(AuditEvent.username == username)
    if study_id is not None:
        query = query.where(AuditEvent.study_id == study_id)
    total = db.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = db.scalars(
        query.order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
        .limit(page_size)
        .offset((page - 1) * page_size)
    )
    return AuditPage(
        total=total,
        page=page,
        page_size=page_size,
        items=[
            AuditOut(
                id=e.id,
                at=e.at,
                username=e.username,
                action=e.action,
                object_type=e.object_type,
                object_id=e.object_id,
                study_id=e.study_id,
                remote_addr=e.remote_addr,
                details=e.details,
            )
            for e in rows
        ],
    )


@router.get("/audit", response_model=AuditPage)
def list_audit(
    db: SessionDep,
    _: AdminDep,
    action: Annotated[str | None, Query(max_length=32)] = None,
    username: Annotated[str | None, Query(max_length=64)] = None,
    study_id: Annotated[int | None, Query(ge=1)] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditPage:
    """Who saw, edited, signed what, when, from where; newest first."""
    return audit_page(
        db, action=action, username=username, study_id=study_id, page=page, page_size=page_size
    )


@router.post(
    "/deliveries/{delivery_id}/retry",
    response_model=DeliveryOut,
    responses={404: {"description": "no such delivery"}, 409: {"description": "not failed"}},
)
def retry_delivery(
    request: Request, delivery_id: RowId, db: SessionDep, admin: AdminDep
) -> DeliveryOut:
    """Send a failed delivery again: back to `pending` with a fresh attempt budget."""
    delivery = db.get(Delivery, delivery_id, with_for_update=True)
    if delivery is None:
        raise HTTPException(status_code=404, detail="no such delivery")
    report = db.get(Report, delivery.report_id)
    assert report is not None
    previous_attempts = delivery.attempts
    try:
        deliveries.retry_failed(db, delivery)
    except ValueError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    notify_outbox(db)
    audit.record(
        db,
        request,
        admin,
        "delivery_retry",
        object_type="delivery",
        object_id=delivery.id,
        study_id=report.study_id,
        details={"kind": delivery.kind, "previous_attempts": previous_attempts},
    )
    db.commit()
    return delivery_out(delivery, report.status)


@router.post(
    "/draft-jobs/{job_id}/retry",
    response_model=JobOut,
    responses={404: {"description": "no such job"}, 409: {"description": "not failed"}},
)
def retry_draft(request: Request, job_id: RowId, db: SessionDep, admin: AdminDep) -> JobOut:
    """Draft a failed job again (e.g. after the model server is back): back to `pending` with a
    fresh attempt budget; the relay publishes it."""
    job = db.get(DraftJob, job_id, with_for_update=True)
    if job is None:
        raise HTTPException(status_code=404, detail="no such draft job")
    if job.state != DraftJobState.FAILED:
        raise HTTPException(status_code=409, detail=f"draft job is {job.state}, not failed")
    study = db.get(Study, job.study_id, with_for_update=True)
    assert study is not None
    previous = {"attempts": job.attempts, "reason": (job.reason or "")[:300]}
    job.state = DraftJobState.PENDING
    job.attempts = 0
    job.reason = None
    job.next_attempt_at = None
    job.finished_at = None
    if study.state == StudyState.FAILED:
        study.state = StudyState.STABLE
    notify_outbox(db)
    audit.record(
        db,
        request,
        admin,
        "draft_retry",
        object_type="draft_job",
        object_id=job.id,
        study_id=study.id,
        details=previous,
    )
    db.commit()
    return JobOut(id=job.id, state=job.state, reason=job.reason, created_at=job.created_at,
                  finished_at=job.finished_at)  # fmt: skip


def _user_out(user: User) -> UserOut:
    return UserOut(
        id=user.id,
        username=user.username,
        full_name=user.full_name,
        dicom_person_name=user.dicom_person_name,
        role=user.role,
        active=user.active,
        last_login_at=user.last_login_at,
    )


@router.get("/users", response_model=list[UserOut])
def list_users(db: SessionDep, _: AdminDep) -> list[UserOut]:
    return [_user_out(u) for u in db.scalars(select(User).order_by(User.username))]


@router.post("/users", response_model=UserOut, status_code=201, responses={409: {}})
def create_user(
    request: Request, body: CreateUserRequest, db: SessionDep, admin: AdminDep
) -> UserOut:
    try:
        password_hash = hash_new_password(body.password, body.username)
    except PasswordRejected as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    user = User(
        username=body.username,
        password_hash=password_hash,
        full_name=body.full_name,
        dicom_person_name=body.dicom_person_name,
        role=body.role,
        active=True,
    )
    db.add(user)
    try:
        db.flush()
    except IntegrityError:
        db.rollback()
        raise HTTPException(status_code=409, detail="username already exists") from None
    audit.record(
        db,
        request,
        admin,
        "user_create",
        object_type="user",
        object_id=user.id,
        details={"role": body.role},
    )
    db.commit()
    return _user_out(user)


@router.post("/users/{user_id}/active", response_model=UserOut, responses={404: {}, 409: {}})
def set_active(
    request: Request,
    user_id: RowId,
    db: SessionDep,
    admin: AdminDep,
    active: Annotated[bool, Query()],
) -> UserOut:
    """Deactivate (ends the user's sessions at their next request) or reactivate a user."""
    user = db.get(User, user_id)
    if user is None:
        raise HTTPException(status_code=404, detail="no such user")
    if user.id == admin.id and not active:
        raise HTTPException(status_code=409, detail="you cannot deactivate yourself")
    user.active = active
    ended = 0 if active else sessions.revoke_user_sessions(db, user.id, "deactivated")
    audit.record(
        db, request, admin, "user_active", object_type="user", object_id=user.id,
        details={"active": active, "sessions_ended": ended},
    )  # fmt: skip
    db.commit()
    return _user_out(user)


class SessionsEnded(BaseModel):
    sessions_ended: int


@router.post(
    "/users/{user_id}/sign-out-everywhere", response_model=SessionsEnded, responses={404: {}}
)
def sign_out_everywhere(
    request: Request, user_id: RowId, db: SessionDep, admin: AdminDep
) -> SessionsEnded:
    """End every session of a user (a lost badge, a shared workstation): each copy of each
    cookie stops working at its next request. An admin may do it to their own account too."""
    user = db.get(User, user_id)
    if user is None:
        raise HTTPException(status_code=404, detail="no such user")
    return SessionsEnded(sessions_ended=end_every_session(db, request, admin, user))


def end_every_session(db: Session, request: Request, admin: User, user: User) -> int:
    """An admin's "sign out everywhere", audited and committed (the API and the admin page);
    how many sessions were open."""
    ended = sessions.revoke_user_sessions(db, user.id, "admin_sign_out")
    audit.record(
        db, request, admin, "sessions_revoked", object_type="user", object_id=user.id,
        details={"sessions_ended": ended},
    )  # fmt: skip
    db.commit()
    return ended


@router.get(
    "/feedback.jsonl",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
def export_feedback(
    request: Request,
    db: SessionDep,
    admin: AdminDep,
    since: datetime | None = None,
    until: datetime | None = None,
) -> StreamingResponse:
    """Accepted / rejected / adjusted findings of signed reports, one JSON object per line."""
    audit.record(
        db, request, admin, "feedback_export",
        details={"since": since.isoformat() if since else None,
                 "until": until.isoformat() if until else None},
    )  # fmt: skip
    db.commit()
    db.close()

    def lines() -> Iterator[str]:
        # Its own session: the request's may be closed before the stream finishes.
        with sessionmaker(get_engine())() as stream_db:
            yield from feedback_lines(stream_db, since, until)

    return StreamingResponse(
        lines(),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": 'attachment; filename="medrega-feedback.jsonl"'},
    )
