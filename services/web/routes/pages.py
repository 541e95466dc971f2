"""Server-rendered pages. Data comes from the same functions as the JSON API."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.responses import Response

from services.web import audit
from services.web.deps import AdminDep, RowId, SessionDep, UserDep
from services.web.password_policy import PasswordRejected
from services.web.passwords import hash_new_password
from services.web.routes.admin import audit_page, end_every_session
from services.web.routes.studies import load_study
from services.web.schemas import CreateUserRequest
from services.web.study_view import study_detail
from services.web.templating import render
from services.web.worklist_query import STATUSES, WorklistFilter, load_worklist
from shared.db.models import Series, User

router = APIRouter(include_in_schema=False)


@router.get("/")
def root() -> Response:
    return RedirectResponse("/worklist", status_code=303)


@router.get("/worklist")
def worklist_page(
    request: Request,
    db: SessionDep,
    user: UserDep,
    status: Annotated[str | None, Query(max_length=32)] = None,
    modality: Annotated[str | None, Query(max_length=16)] = None,
    q: Annotated[str | None, Query(max_length=128)] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    filters = WorklistFilter(
        status=status if status in STATUSES else None,
        modality=modality or None,
        q=q.strip() if q and q.strip() else None,
        page=page,
    )
    data = load_worklist(db, filters)
    modalities = sorted(
        m
        for m in db.scalars(
            select(Series.modality)
            .where(Series.is_own_output.is_(False), Series.modality.is_not(None))
            .distinct()
        )
        if m
    )
    audit.record(
        db, request, user, "view_worklist", details={"page": page, "count": len(data.items)}
    )
    db.commit()
    return render(
        request,
        "worklist.html",
        {"worklist": data, "filters": filters, "statuses": STATUSES, "modalities": modalities},
    )


@router.get("/studies/{study_id}")
def review_page(request: Request, study_id: RowId, db: SessionDep, user: UserDep) -> Response:
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
        details={"version": detail.report.version, "page": True} if detail.report else None,
    )
    db.commit()
    return render(
        request, "review.html", {"detail": detail, "detail_json": detail.model_dump(mode="json")}
    )


@router.get("/admin/audit")
def audit_log_page(
    request: Request,
    db: SessionDep,
    _: AdminDep,
    action: Annotated[str | None, Query(max_length=32)] = None,
    username: Annotated[str | None, Query(max_length=64)] = None,
    study_id: Annotated[str | None, Query(max_length=12)] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    study = int(study_id) if study_id and study_id.isdigit() else None
    data = audit_page(
        db, action=action or None, username=username or None, study_id=study, page=page,
        page_size=100,
    )  # fmt: skip
    base = {
        k: v for k, v in {"action": action, "username": username, "study_id": study}.items() if v
    }
    return render(
        request,
        "audit.html",
        {
            "page": data,
            "filters": {"action": action, "username": username, "study_id": study},
            "prev_query": urlencode({**base, "page": page - 1}),
            "next_query": urlencode({**base, "page": page + 1}),
        },
    )


def _users_page(
    request: Request, db: SessionDep, message: str | None = None, status: int = 200
) -> Response:
    users = list(db.scalars(select(User).order_by(User.username)))
    return render(request, "users.html", {"users": users, "message": message}, status_code=status)


@router.get("/admin/users")
def users_page(request: Request, db: SessionDep, _: AdminDep) -> Response:
    return _users_page(request, db)


@router.post("/admin/users")
def create_user_form(
    request: Request,
    db: SessionDep,
    admin: AdminDep,
    username: Annotated[str, Form(max_length=64)],
    full_name: Annotated[str, Form(max_length=128)],
    role: Annotated[str, Form(max_length=16)],
    password: Annotated[str, Form(max_length=256)],
    dicom_person_name: Annotated[str, Form(max_length=324)] = "",
) -> Response:
    try:
        body = CreateUserRequest(
            username=username,
            full_name=full_name,
            role=role,  # type: ignore[arg-type]
            password=password,
            dicom_person_name=dicom_person_name or None,
        )
    except ValidationError as exc:
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _users_page(request, db, message, status=422)
    try:
        password_hash = hash_new_password(body.password, body.username)
    except PasswordRejected as exc:
        return _users_page(request, db, str(exc), status=422)
    user = User(
        username=body.username,
        password_hash=password_hash,
        full_name=body.full_name,
        dicom_person_name=body.dicom_person_name,
        role=body.role,
    )
    db.add(user)
    try:
        db.flush()
    except IntegrityError:
        db.rollback()
        return _users_page(request, db, "username already exists", status=409)
    audit.record(
        db, request, admin, "user_create", object_type="user", object_id=user.id,
        details={"role": body.role},
    )  # fmt: skip
    db.commit()
    return RedirectResponse("/admin/users", status_code=303)


@router.post("/admin/users/{user_id}/sign-out-everywhere")
def sign_out_everywhere_form(
    request: Request, user_id: RowId, db: SessionDep, admin: AdminDep
) -> Response:
    user = db.get(User, user_id)
    if user is None:
        return _users_page(request, db, "no such user", status=404)
    ended = end_every_session(db, request, admin, user)
    if user.id == admin.id:  # their own, this one included: back to the sign-in page
        return RedirectResponse("/login", status_code=303)
    return _users_page(request, db, f"{user.username}: {ended} session(s) ended")
