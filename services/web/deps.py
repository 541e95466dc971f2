"""Request dependencies: database session, the signed-in user, roles, CSRF.

`SessionDep`, `UserDep`, `AdminDep` are what routes declare; `csrf_protect` runs on every route
(registered on the app) so no state-changing endpoint can forget it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session, sessionmaker

from services.web import sessions
from services.web.web_settings import (
    CSRF_FORM_FIELD,
    CSRF_HEADER,
    SESSION_COOKIE,
    SESSION_REFRESH_S,
)
from shared.db.models import User, UserRole
from shared.db.session import get_engine

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# Sign-in checks its own (double-submit) token: there is no session yet to derive one from.
CSRF_EXEMPT_PATHS = {"/login"}


class AuthRequired(Exception):
    """No valid session: 401 for the API, a redirect to the sign-in page for pages."""


class Forbidden(Exception):
    """Signed in, but the role does not allow this."""


class CsrfFailed(Exception):
    """A state-changing request without the session's CSRF token."""


def get_db() -> Iterator[Session]:
    session = sessionmaker(get_engine(), expire_on_commit=False)()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_db)]
# A row id in a URL: a BIGINT, so a larger number is a 422, never a database error.
RowId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def _session_data(request: Request) -> sessions.SessionData | None:
    cached = getattr(request.state, "session_data", None)
    if cached is not None:
        return cached if isinstance(cached, sessions.SessionData) else None
    data = sessions.decode_session(request.cookies.get(SESSION_COOKIE))
    request.state.session_data = data if data is not None else False
    return data


def current_session(request: Request) -> sessions.SessionData:
    """The request's (signed, unexpired) session data; only after `current_user` accepted it."""
    data = _session_data(request)
    if data is None:
        raise AuthRequired()
    return data


def current_user(request: Request, db: SessionDep) -> User:
    data = _session_data(request)
    now = int(time.time())
    if data is None or data.expired(now):
        raise AuthRequired()
    user = db.get(User, data.user_id)
    if (
        user is None
        or not user.active
        or sessions.password_fingerprint(user.password_hash) != data.password_fp
        or not sessions.session_row_valid(db, data, now)
    ):
        raise AuthRequired()
    request.state.user = user
    request.state.csrf_token = sessions.csrf_token(data.sid)
    if now - data.last_seen >= SESSION_REFRESH_S:
        # Sliding idle window; the middleware writes the cookie onto whatever response is sent.
        refreshed = sessions.SessionData(
            data.user_id, data.sid, data.issued_at, now, data.password_fp
        )
        sessions.touch_session(db, data, now)
        request.state.refresh_cookie = sessions.encode_session(refreshed)
    return user


UserDep = Annotated[User, Depends(current_user)]


def require_radiologist(user: UserDep) -> User:
    """Editing and signing are clinical acts: radiologists only."""
    if user.role != UserRole.RADIOLOGIST:
        raise Forbidden()
    return user


def require_admin(user: UserDep) -> User:
    if user.role != UserRole.ADMIN:
        raise Forbidden()
    return user


RadiologistDep = Annotated[User, Depends(require_radiologist)]
AdminDep = Annotated[User, Depends(require_admin)]


async def csrf_protect(request: Request) -> None:
    """Every non-safe request carries the session's CSRF token (header, or form field)."""
    if request.method in SAFE_METHODS or request.url.path in CSRF_EXEMPT_PATHS:
        return
    data = _session_data(request)
    if data is None:
        raise AuthRequired()
    token = request.headers.get(CSRF_HEADER)
    if token is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get(CSRF_FORM_FIELD)
        token = value if isinstance(value, str) else None
    if not sessions.csrf_valid(data.sid, token):
        raise CsrfFailed()
