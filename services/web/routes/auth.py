"""Sign-in and sign-out pages, and the session endpoint API clients read their CSRF token from."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from starlette.responses import Response

from services.web import audit, login_throttle, sessions
from services.web.cookies import delete_cookie, set_cookie
from services.web.deps import SessionDep, UserDep, current_session
from services.web.i18n import label
from services.web.password_policy import PasswordRejected
from services.web.passwords import hash_new_password, hash_password, needs_rehash, verify_password
from services.web.templating import render, request_language
from services.web.web_settings import (
    LOGIN_CSRF_COOKIE,
    MAX_PASSWORD_LENGTH,
    SESSION_COOKIE,
    SESSION_MAX_S,
)
from shared.db.models import User

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


def _throttle_key(request: Request, username: str) -> tuple[str, str]:
    # The connection's address (behind the TLS proxy: the one uvicorn takes from the trusted
    # proxy's X-Forwarded-For, see README) and the name as typed.
    return audit.client_address(request) or "unknown", username[:64]


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
    address, key = _throttle_key(request, username)
    reservation = login_throttle.reserve(db, address, key)  # commits: counted before checking
    if not reservation.allowed:
        if reservation.audit_throttle:
            audit.record(db, request, None, "login_throttled", username=key,
                         details={"failures": reservation.failures})  # fmt: skip
            db.commit()
        response = _login_page(request, label("too_many_logins", labels_lang), next_path, 429)
        response.headers["Retry-After"] = str(reservation.retry_after_s)
        return response
    user = db.scalar(select(User).where(User.username == username))
    valid = verify_password(user.password_hash if user else None, password)
    if user is None or not valid or not user.active:
        if reservation.audit_failure:  # one row per run of failures; the count is in the table
            audit.record(db, request, None, "login_failed", username=key)
            db.commit()
        return _login_page(request, label("bad_login", labels_lang), next_path, status=401)
    login_throttle.clear(db, address, key)
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    user.last_login_at = datetime.now(UTC)
    data = sessions.start_session(db, user.id, user.password_hash, address)
    details = {"failures_before": reservation.failures - 1} if reservation.failures > 1 else None
    audit.record(db, request, user, "login", object_type="user", object_id=user.id,
                 details=details)  # fmt: skip
    db.commit()
    response = RedirectResponse(next_path, status_code=303)
    set_cookie(
        response, request.scope, SESSION_COOKIE, sessions.encode_session(data), SESSION_MAX_S
    )
    delete_cookie(response, request.scope, LOGIN_CSRF_COOKIE)
    return response


SessionDataDep = Annotated[sessions.SessionData, Depends(current_session)]


@router.post("/logout", include_in_schema=False)
def logout(request: Request, db: SessionDep, user: UserDep, data: SessionDataDep) -> Response:
    """Ends the session on the server: every copy of the cookie stops working."""
    sessions.revoke_session(db, data.sid, "logout")
    audit.record(db, request, user, "logout", object_type="user", object_id=user.id)
    db.commit()
    request.state.session_replaced = True  # don't let the refresh re-set what we delete
    response = RedirectResponse("/login", status_code=303)
    delete_cookie(response, request.scope, SESSION_COOKIE)
    return response


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: Annotated[str, Field(max_length=MAX_PASSWORD_LENGTH)]
    new_password: Annotated[str, Field(max_length=MAX_PASSWORD_LENGTH)]


def apply_password_change(
    request: Request, db: SessionDep, user: User, current: str, new: str
) -> sessions.SessionData:
    """Check the current password (throttled like sign-in: a stolen session can't guess it),
    apply the policy to the new one, end every session of the user and start one for this
    browser. HTTPException (403, 422, 429) says what went wrong; commits."""
    address, key = _throttle_key(request, user.username)
    reservation = login_throttle.reserve(db, address, key)
    if not reservation.allowed:
        raise HTTPException(
            status_code=429,
            detail="too many wrong passwords; try again later",
            headers={"Retry-After": str(reservation.retry_after_s)},
        )
    if not verify_password(user.password_hash, current):
        if reservation.audit_failure:
            audit.record(db, request, user, "password_change_failed", object_type="user",
                         object_id=user.id)  # fmt: skip
            db.commit()
        raise HTTPException(status_code=403, detail="the current password is wrong")
    login_throttle.clear(db, address, key)
    try:
        user.password_hash = hash_new_password(new, user.username)
    except PasswordRejected as exc:
        db.commit()
        raise HTTPException(status_code=422, detail=str(exc)) from None
    ended = sessions.revoke_user_sessions(db, user.id, "password_change")
    data = sessions.start_session(db, user.id, user.password_hash, address)
    audit.record(db, request, user, "password_change", object_type="user", object_id=user.id,
                 details={"sessions_ended": ended})  # fmt: skip
    db.commit()
    request.state.session_replaced = True  # the old session's refresh must not be re-set
    return data


@router.post(
    "/api/v1/session/password",
    tags=["auth"],
    status_code=204,
    responses={403: {}, 422: {}, 429: {}},
)
def change_password(
    request: Request, body: PasswordChange, db: SessionDep, user: UserDep
) -> Response:
    """Change your own password. Every session you have ends, this one included: the answer
    carries a new session cookie for this browser (the CSRF token changes with it)."""
    data = apply_password_change(request, db, user, body.current_password, body.new_password)
    response = Response(status_code=204)
    set_cookie(
        response, request.scope, SESSION_COOKIE, sessions.encode_session(data), SESSION_MAX_S
    )
    return response


@router.get("/account/password", include_in_schema=False)
def password_page(request: Request, user: UserDep) -> Response:
    return render(request, "password.html", {"message": None, "done": False})


@router.post("/account/password", include_in_schema=False)
def password_form(
    request: Request,
    db: SessionDep,
    user: UserDep,
    current_password: Annotated[str, Form(max_length=MAX_PASSWORD_LENGTH)],
    new_password: Annotated[str, Form(max_length=MAX_PASSWORD_LENGTH)],
) -> Response:
    try:
        data = apply_password_change(request, db, user, current_password, new_password)
    except HTTPException as exc:
        response = render(
            request, "password.html", {"message": exc.detail, "done": False},
            status_code=exc.status_code,
        )  # fmt: skip
        response.headers.update(exc.headers or {})
        return response
    # The page's CSRF token belongs to the new session now.
    request.state.csrf_token = sessions.csrf_token(data.sid)
    response = render(request, "password.html", {"message": None, "done": True})
    set_cookie(
        response, request.scope, SESSION_COOKIE, sessions.encode_session(data), SESSION_MAX_S
    )
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
