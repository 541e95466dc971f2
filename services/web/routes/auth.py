"""Sign-in and sign-out pages, and the session endpoint API clients read their CSRF token from."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse
from pydantic import BaseModel
from sqlalchemy import func, select
from starlette.responses import Response

from services.web import audit, sessions
from services.web.cookies import delete_cookie, set_cookie
from services.web.deps import SessionDep, UserDep
from services.web.i18n import label
from services.web.passwords import hash_password, needs_rehash, verify_password
from services.web.templating import render, request_language
from services.web.web_settings import (
    LOGIN_CSRF_COOKIE,
    LOGIN_FAILURE_WINDOW_S,
    LOGIN_MAX_FAILURES,
    SESSION_COOKIE,
    SESSION_MAX_S,
)
from shared.db.models import AuditEvent, User

router = APIRouter()


def safe_next(target: str | None) -> str:
    """Only same-site paths: never an open redirect to another host."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/worklist"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/worklist"


def _login_page(request: Request, error: str | None, next_path: str, status: int = 200) -> Response:
    token = secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        {"error": error, "next": next_path, "login_csrf": token},
        status_code=status,
    )
    set_cookie(response, request.scope, LOGIN_CSRF_COOKIE, token, 3600)
    return response


@router.get("/login", include_in_schema=False)
def login_page(request: Request, next: str | None = None) -> Response:
    return _login_page(request, None, safe_next(next))


def _recent_failures(db: SessionDep, username: str) -> int:
    since = datetime.now(UTC) - timedelta(seconds=LOGIN_FAILURE_WINDOW_S)
    return int(
        db.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(
                AuditEvent.action == "login_failed",
                AuditEvent.username == username,
                AuditEvent.at > since,
            )
        )
        or 0
    )


@router.post("/login", include_in_schema=False)
def login(
    request: Request,
    db: SessionDep,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=256)],
    csrf_token: Annotated[str, Form(max_length=128)] = "",
    next: Annotated[str, Form(max_length=512)] = "/worklist",
) -> Response:
    labels_lang = request_language(request)
    next_path = safe_next(next)
    cookie_token = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie_token or not secrets.compare_digest(cookie_token, csrf_token):
        # Login CSRF (double submit): a foreign site can't sign a user in as someone else.
        return _login_page(request, label("bad_login", labels_lang), next_path, status=400)
    username = username.strip()
    if _recent_failures(db, username) >= LOGIN_MAX_FAILURES:
        audit.record(db, request, None, "login_refused", username=username[:64])
        db.commit()
        return _login_page(request, label("too_many_logins", labels_lang), next_path, status=429)
    user = db.scalar(select(User).where(User.username == username))
    valid = verify_password(user.password_hash if user else None, password)
    if user is None or not valid or not user.active:
        audit.record(db, request, None, "login_failed", username=username[:64])
        db.commit()
        return _login_page(request, label("bad_login", labels_lang), next_path, status=401)
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    user.last_login_at = datetime.now(UTC)
    audit.record(db, request, user, "login", object_type="user", object_id=user.id)
    db.commit()
    data = sessions.new_session(user.id, user.password_hash, int(time.time()))
    response = RedirectResponse(next_path, status_code=303)
    set_cookie(
        response, request.scope, SESSION_COOKIE, sessions.encode_session(data), SESSION_MAX_S
    )
    delete_cookie(response, request.scope, LOGIN_CSRF_COOKIE)
    return response


@router.post("/logout", include_in_schema=False)
def logout(request: Request, db: SessionDep, user: UserDep) -> Response:
    audit.record(db, request, user, "logout", object_type="user", object_id=user.id)
    db.commit()
    request.state.session_replaced = True  # don't let the refresh re-set what we delete
    response = RedirectResponse("/login", status_code=303)
    delete_cookie(response, request.scope, SESSION_COOKIE)
    return response


class SessionInfo(BaseModel):
    user_id: int
    username: str
    full_name: str
    role: str
    csrf_token: str


@router.get("/api/v1/session", tags=["auth"], response_model=SessionInfo)
def session_info(request: Request, user: UserDep) -> SessionInfo:
    """The signed-in user and the CSRF token to send as `X-CSRF-Token` on every POST."""
    return SessionInfo(
        user_id=user.id,
        username=user.username,
        full_name=user.full_name,
        role=user.role,
        csrf_token=request.state.csrf_token,
    )
