"""Sessions: a signed cookie naming a server-side row (`web_sessions`) that can be revoked.

The cookie holds `{uid, sid, iat, last, pw}` signed with HMAC-SHA256 under the secret key:
- `sid` is random per sign-in; the CSRF token is derived from it; the row's key is its sha256
  (the table alone cannot be turned back into cookies);
- `iat`/`last` bound the absolute and idle lifetime (checked server-side, not by cookie expiry);
  an issue time in the future is refused (it would never expire);
- `pw` is a fingerprint of the user's password hash, a second guard behind revocation.
Every request needs the row to exist, be unrevoked and be within its lifetimes by the row's own
times: signing out, a password change, an admin's "sign out everywhere" and deactivation revoke
rows, so every copy of the cookie stops working at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from services.web.web_settings import SESSION_CLOCK_SKEW_S, SESSION_IDLE_S, SESSION_MAX_S
from shared.config import get_settings
from shared.db.models import WebSession


def _key(purpose: str) -> bytes:
    # Separate keys per purpose: a session signature can never be replayed as a CSRF token.
    secret = get_settings().secret("secret_key").encode()
    return hmac.new(secret, f"medrega-web/{purpose}".encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def password_fingerprint(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SessionData:
    user_id: int
    sid: str
    issued_at: int
    last_seen: int
    password_fp: str

    def expired(self, now: int) -> bool:
        """Past its lifetimes, or claiming times that have not come yet (forged or replayed)."""
        return (
            now - self.issued_at > SESSION_MAX_S
            or now - self.last_seen > SESSION_IDLE_S
            or self.issued_at > now + SESSION_CLOCK_SKEW_S
            or self.last_seen > now + SESSION_CLOCK_SKEW_S
            or self.last_seen < self.issued_at
        )


def new_session(user_id: int, password_hash: str, now: int | None = None) -> SessionData:
    at = int(time.time()) if now is None else now
    return SessionData(
        user_id, secrets.token_urlsafe(16), at, at, password_fingerprint(password_hash)
    )


def encode_session(data: SessionData) -> str:
    payload = json.dumps(
        {
            "uid": data.user_id,
            "sid": data.sid,
            "iat": data.issued_at,
            "last": data.last_seen,
            "pw": data.password_fp,
        },
        separators=(",", ":"),
    ).encode()
    body = _b64(payload)
    signature = _b64(hmac.new(_key("session"), body.encode(), hashlib.sha256).digest())
    return f"{body}.{signature}"


def decode_session(cookie: str | None) -> SessionData | None:
    """The session in a cookie whose signature checks out; None for anything else."""
    if not cookie or cookie.count(".") != 1 or len(cookie) > 1024:
        return None
    body, signature = cookie.split(".")
    expected = _b64(hmac.new(_key("session"), body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(signature, expected):
        return None
    try:
        raw = json.loads(_unb64(body))
        return SessionData(
            int(raw["uid"]), str(raw["sid"]), int(raw["iat"]), int(raw["last"]), str(raw["pw"])
        )
    except (ValueError, KeyError, TypeError):
        return None


def csrf_token(sid: str) -> str:
    """The CSRF token of a session: derived, so it needs no storage and dies with the session."""
    return _b64(hmac.new(_key("csrf"), sid.encode(), hashlib.sha256).digest())


def csrf_valid(sid: str, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(csrf_token(sid), token or "")


def session_key(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def start_session(
    db: Session, user_id: int, password_hash: str, remote_addr: str | None
) -> SessionData:
    """A new session and its row (not committed: the caller's transaction, with its audit row)."""
    data = new_session(user_id, password_hash)
    at = datetime.fromtimestamp(data.issued_at, UTC)
    db.add(
        WebSession(
            id=session_key(data.sid),
            user_id=user_id,
            created_at=at,
            last_seen_at=at,
            remote_addr=remote_addr,
        )
    )
    # Rows past the absolute lifetime are dead anyway; the user's own are swept here.
    db.execute(
        delete(WebSession).where(
            WebSession.user_id == user_id,
            WebSession.created_at < at - timedelta(seconds=SESSION_MAX_S + 60),
        )
    )
    return data


def session_row_valid(db: Session, data: SessionData, now: int) -> bool:
    """The server's word on a well-signed cookie: its row stands and is within its lifetimes."""
    row = db.scalar(select(WebSession).where(WebSession.id == session_key(data.sid)))
    if row is None or row.revoked_at is not None or row.user_id != data.user_id:
        return False
    at = datetime.fromtimestamp(now, UTC)
    return at - row.created_at <= timedelta(
        seconds=SESSION_MAX_S
    ) and at - row.last_seen_at <= timedelta(seconds=SESSION_IDLE_S)


def touch_session(db: Session, data: SessionData, now: int) -> None:
    """Slide the idle window server-side too; commits (a read-only request has nothing else)."""
    db.execute(
        update(WebSession)
        .where(WebSession.id == session_key(data.sid), WebSession.revoked_at.is_(None))
        .values(last_seen_at=datetime.fromtimestamp(now, UTC))
    )
    db.commit()


def revoke_session(db: Session, sid: str, reason: str) -> None:
    """End one session, every copy of its cookie (not committed)."""
    db.execute(
        update(WebSession)
        .where(WebSession.id == session_key(sid), WebSession.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC), revoked_reason=reason)
    )


def revoke_user_sessions(db: Session, user_id: int, reason: str) -> int:
    """End every session of a user (not committed); how many were open."""
    result = db.execute(
        update(WebSession)
        .where(WebSession.user_id == user_id, WebSession.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC), revoked_reason=reason)
    )
    return int(getattr(result, "rowcount", 0) or 0)
