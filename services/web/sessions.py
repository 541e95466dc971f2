"""Signed-cookie sessions: no session table, nothing to clean up, nothing to steal from the DB.

The cookie holds `{uid, sid, iat, last, pw}` signed with HMAC-SHA256 under the secret key:
- `sid` is random per sign-in; the CSRF token is derived from it;
- `iat`/`last` bound the absolute and idle lifetime (checked server-side, not by cookie expiry);
- `pw` is a fingerprint of the user's password hash, so changing a password ends every session
  of that user; deactivating the user ends them too (the user row is read on every request).
Signing out deletes the cookie; a copied cookie stays valid until the idle timeout at most.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from services.web.web_settings import SESSION_IDLE_S, SESSION_MAX_S
from shared.config import get_settings


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
        return now - self.issued_at > SESSION_MAX_S or now - self.last_seen > SESSION_IDLE_S


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
