"""Sign-in, sessions, CSRF, roles, and the first-admin CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.web import sessions
from services.web.web_settings import LOGIN_MAX_FAILURES, SESSION_COOKIE, SESSION_IDLE_S
from shared.config import REPO_ROOT
from shared.db.models import AuditEvent, User
from tests.web.conftest import sign_in
from tests.web.factories import PASSWORD


def _audit(db_session: Session, action: str) -> list[AuditEvent]:
    db_session.expire_all()
    return list(db_session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def _login_token(client: TestClient) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert match
    return match.group(1)


def test_pages_redirect_and_api_answers_401_without_a_session(client: TestClient) -> None:
    page = client.get("/worklist?status=signed", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2Fworklist%3Fstatus%3Dsigned"
    for path in ("/api/v1/worklist", "/api/v1/studies/1", "/api/v1/admin/audit", "/api/v1/session"):
        assert client.get(path).status_code == 401, path
    assert client.get("/api/v1/images/1.2.3/frames/1").status_code == 401
    assert client.post("/api/v1/studies/1/report/sign", json={}).status_code == 401
    # The open doors: sign-in, health, metrics.
    assert client.get("/login").status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_sign_in_sets_a_protected_cookie_and_is_audited(
    client: TestClient, radiologist: User, db_session: Session
) -> None:
    response = client.post(
        "/login",
        data={"username": "li.wei", "password": PASSWORD, "csrf_token": _login_token(client),
              "next": "/studies/5"},
        follow_redirects=False,
    )  # fmt: skip
    assert response.status_code == 303 and response.headers["location"] == "/studies/5"
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE)
    )
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert client.get("/api/v1/session").json()["username"] == "li.wei"
    (event,) = _audit(db_session, "login")
    assert event.user_id == radiologist.id and event.remote_addr


def test_wrong_password_unknown_user_and_missing_login_token_are_refused(
    client: TestClient, radiologist: User, db_session: Session
) -> None:
    for username, password in (("li.wei", "wrong-password-123"), ("nobody", PASSWORD)):
        response = client.post(
            "/login",
            data={"username": username, "password": password, "csrf_token": _login_token(client)},
            follow_redirects=False,
        )
        assert response.status_code == 401
        assert "Wrong username or password" in response.text
    assert {e.username for e in _audit(db_session, "login_failed")} == {"li.wei", "nobody"}
    no_token = client.post(
        "/login", data={"username": "li.wei", "password": PASSWORD}, follow_redirects=False
    )
    assert no_token.status_code == 400
    assert client.get("/api/v1/session").status_code == 401


def test_repeated_failures_hold_back_this_address_and_username(
    client: TestClient, radiologist: User
) -> None:
    # More in test_sign_in_hardening.py: the race, other addresses, delays, audit rows.
    for _ in range(LOGIN_MAX_FAILURES):
        client.post(
            "/login",
            data={"username": "li.wei", "password": "x" * 12, "csrf_token": _login_token(client)},
        )
    response = client.post(
        "/login",
        data={"username": "li.wei", "password": PASSWORD, "csrf_token": _login_token(client)},
    )
    assert response.status_code == 429


def test_next_parameter_cannot_redirect_off_site(client: TestClient, radiologist: User) -> None:
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        response = client.post(
            "/login",
            data={"username": "li.wei", "password": PASSWORD, "csrf_token": _login_token(client),
                  "next": target},
            follow_redirects=False,
        )  # fmt: skip
        assert response.headers["location"] == "/worklist"


def test_logout_needs_csrf_ends_the_session_and_is_audited(
    rad_client: TestClient, db_session: Session
) -> None:
    token = rad_client.headers.pop("X-CSRF-Token")
    assert rad_client.post("/logout", follow_redirects=False).status_code == 403
    response = rad_client.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert rad_client.get("/api/v1/session").status_code == 401
    assert len(_audit(db_session, "logout")) == 1


def test_state_changing_requests_without_the_csrf_token_are_refused(
    rad_client: TestClient,
) -> None:
    token = rad_client.headers.pop("X-CSRF-Token")
    body = {"base_version": 1, "operations": [{"op": "review", "ordinal": 0, "review": "accepted"}]}
    assert rad_client.post("/api/v1/studies/1/report/edits", json=body).status_code == 403
    wrong = rad_client.post(
        "/api/v1/studies/1/report/edits", json=body, headers={"X-CSRF-Token": token[::-1]}
    )
    assert wrong.status_code == 403
    assert wrong.json()["detail"] == "missing or invalid CSRF token"


def test_forged_expired_or_revoked_sessions_are_rejected(
    client: TestClient, radiologist: User, db_session: Session
) -> None:
    sign_in(client, "li.wei")
    good = client.cookies.get(SESSION_COOKIE)
    assert good
    data = sessions.decode_session(good)
    assert data is not None

    def status_with(cookie: str) -> int:
        client.cookies.set(SESSION_COOKIE, cookie)
        return client.get("/api/v1/session").status_code

    body, signature = good.split(".")
    assert status_with(body + "." + signature[:-2] + "AA") == 401  # tampered signature
    other_user = sessions.encode_session(
        sessions.SessionData(radiologist.id + 1, data.sid, data.issued_at, data.last_seen, "x")
    )
    assert status_with(other_user) == 401
    idle = int(time.time()) - SESSION_IDLE_S - 5
    expired = sessions.SessionData(data.user_id, data.sid, idle, idle, data.password_fp)
    assert status_with(sessions.encode_session(expired)) == 401
    assert status_with(good) == 200
    radiologist = db_session.merge(radiologist)
    radiologist.active = False
    db_session.commit()
    assert status_with(good) == 401  # deactivated: every session ends at once


def test_password_change_ends_existing_sessions(
    rad_client: TestClient, radiologist: User, db_session: Session
) -> None:
    from services.web.passwords import hash_password

    assert rad_client.get("/api/v1/session").status_code == 200
    user = db_session.merge(radiologist)
    user.password_hash = hash_password("another-long-password")
    db_session.commit()
    assert rad_client.get("/api/v1/session").status_code == 401


def test_radiologist_cannot_reach_admin_pages_or_api(rad_client: TestClient) -> None:
    assert rad_client.get("/api/v1/admin/audit").status_code == 403
    assert rad_client.get("/api/v1/admin/users").status_code == 403
    assert rad_client.post("/api/v1/admin/deliveries/1/retry").status_code == 403
    assert rad_client.get("/api/v1/admin/feedback.jsonl").status_code == 403
    page = rad_client.get("/admin/audit")
    assert page.status_code == 403 and "does not allow" in page.text


def test_admin_cannot_edit_or_sign(admin_client: TestClient) -> None:
    body = {"base_version": 1, "confirm": True}
    assert admin_client.post("/api/v1/studies/1/report/sign", json=body).status_code == 403


def test_create_admin_cli_makes_a_user_who_can_sign_in(
    client: TestClient, db_session: Session
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.web.create_admin", "--username", "first.admin",
         "--full-name", "First Admin"],
        input="a-long-enough-password\n", capture_output=True, text=True, cwd=REPO_ROOT,
        env={**os.environ}, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "created admin 'first.admin'" in result.stdout
    user = db_session.scalar(select(User).where(User.username == "first.admin"))
    assert user is not None and user.role == "admin" and user.password_hash.startswith("$argon2id$")
    sign_in(client, "first.admin", "a-long-enough-password")
    assert client.get("/api/v1/admin/users").status_code == 200
    short = subprocess.run(
        [sys.executable, "-m", "services.web.create_admin", "--username", "x2", "--full-name", "X"],
        input="short\n", capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
    )  # fmt: skip
    assert short.returncode == 2 and "at least" in short.stderr
