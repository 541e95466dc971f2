"""Optional single sign-on with OpenID Connect (authorization code flow, PKCE S256, nonce).

    GET /login/oidc?next=/worklist   → the identity provider's sign-in page
    GET /login/oidc/callback         ← its answer: code exchanged, ID token checked, session started

The provider proves who the person is; this system still decides who may do what: the name in
`MEDREGA_OIDC_USERNAME_CLAIM` must be an existing, active account here (no accounts are made on
the fly, so roles and DICOM names stay under the admins' control). The flow's state, nonce and
PKCE verifier travel in a short-lived, HMAC-signed, HttpOnly cookie bound to this browser; the
ID token's signature (the provider's JWKS), issuer, audience, expiry and nonce are all checked
before a session exists. Every outcome is audited like a password sign-in.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import ssl
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx
from authlib.common.errors import AuthlibBaseError
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuth2Client
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, KeySetSerialization
from sqlalchemy import select
from starlette.responses import Response

from services.web import audit, sessions
from services.web.cookies import delete_cookie, set_cookie
from services.web.deps import SessionDep
from services.web.routes.auth import _login_page, safe_next
from services.web.templating import templates
from services.web.web_settings import SESSION_COOKIE, SESSION_MAX_S
from shared.config import Settings, get_settings
from shared.db.models import User
from shared.tls import client_tls_context

router = APIRouter()
log = logging.getLogger(__name__)
# The sign-in page offers single sign-on when a provider is configured.
templates.env.globals["oidc_enabled"] = lambda: get_settings().oidc_issuer is not None

FLOW_COOKIE = "medrega_oidc_flow"
FLOW_MAX_S = 600  # the person has ten minutes at the provider
ID_TOKEN_ALGORITHMS = ["RS256", "ES256", "PS256"]
CLOCK_LEEWAY_S = 60


class OidcError(Exception):
    """The sign-in cannot go on; the message is for the log and the page, never a secret."""


def _settings() -> Settings:
    settings = get_settings()
    if settings.oidc_issuer is None or settings.oidc_client_id is None:
        raise HTTPException(status_code=404)
    return settings


def _verify(settings: Settings) -> ssl.SSLContext:
    return client_tls_context(settings.oidc_ca)


@lru_cache(maxsize=4)
def _metadata(issuer: str, ca: Path | None) -> dict[str, Any]:
    """The provider's discovery document (cached per process: its endpoints rarely move)."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    response = httpx.get(url, verify=client_tls_context(ca), timeout=10)
    response.raise_for_status()
    metadata: dict[str, Any] = response.json()
    if metadata.get("issuer") != issuer:
        raise OidcError(f"discovery names issuer {metadata.get('issuer')!r}, not {issuer!r}")
    return metadata


def _provider(settings: Settings) -> dict[str, Any]:
    assert settings.oidc_issuer is not None
    return _metadata(settings.oidc_issuer, settings.oidc_ca)


def _client(settings: Settings, request: Request) -> OAuth2Client:
    secret = settings.oidc_client_secret.get_secret_value() if settings.oidc_client_secret else None
    return OAuth2Client(
        client_id=settings.oidc_client_id,
        client_secret=secret,
        scope=settings.oidc_scope,
        redirect_uri=str(request.url_for("oidc_callback")),
        code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_basic" if secret else "none",
        verify=_verify(settings),
        timeout=10,
    )


def _sign_flow(flow: dict[str, Any]) -> str:
    payload = sessions._b64(json.dumps(flow, separators=(",", ":")).encode())
    mac = hmac.new(sessions._key("oidc-flow"), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{sessions._b64(mac)}"


def _read_flow(cookie: str | None) -> dict[str, Any]:
    if not cookie or "." not in cookie:
        raise OidcError("no sign-in in progress in this browser (cookie missing)")
    payload, mac = cookie.rsplit(".", 1)
    expected = hmac.new(sessions._key("oidc-flow"), payload.encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(sessions._b64(expected), mac):
        raise OidcError("sign-in cookie has a bad signature")
    flow: dict[str, Any] = json.loads(sessions._unb64(payload))
    if flow.get("exp", 0) < time.time():
        raise OidcError("sign-in took too long; start again")
    return flow


def validate_id_token(
    id_token: str, keys: KeySetSerialization, *, issuer: str, client_id: str, nonce: str
) -> dict[str, Any]:
    """The ID token's claims once its signature, issuer, audience, expiry and nonce hold."""
    try:
        token = jwt.decode(id_token, KeySet.import_key_set(keys), algorithms=ID_TOKEN_ALGORITHMS)
        jwt.JWTClaimsRegistry(
            leeway=CLOCK_LEEWAY_S,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": client_id},
            nonce={"essential": True, "value": nonce},
            exp={"essential": True},
            sub={"essential": True},
        ).validate(token.claims)
    except (JoseError, ValueError) as exc:
        raise OidcError(f"ID token refused: {type(exc).__name__}: {exc}") from None
    return dict(token.claims)


@router.get("/login/oidc", include_in_schema=False)
def oidc_start(request: Request, next: str | None = None) -> Response:
    settings = _settings()
    try:
        metadata = _provider(settings)
    except (httpx.HTTPError, OidcError, ValueError) as exc:
        log.warning("identity provider unavailable: %s", exc)
        return _failure(request, 502)
    state, nonce, verifier = generate_token(32), generate_token(32), generate_token(64)
    with _client(settings, request) as client:
        url, _ = client.create_authorization_url(
            metadata["authorization_endpoint"], state=state, nonce=nonce, code_verifier=verifier
        )
    flow = {"state": state, "nonce": nonce, "verifier": verifier, "next": safe_next(next),
            "exp": int(time.time()) + FLOW_MAX_S}  # fmt: skip
    response = RedirectResponse(url, status_code=303)
    set_cookie(response, request.scope, FLOW_COOKIE, _sign_flow(flow), FLOW_MAX_S)
    return response


@router.get("/login/oidc/callback", include_in_schema=False, name="oidc_callback")
def oidc_callback(
    request: Request,
    db: SessionDep,
    code: str | None = None,
    state: str | None = None,
    error: str | None = None,
) -> Response:
    settings = _settings()
    assert settings.oidc_issuer is not None and settings.oidc_client_id is not None
    try:
        flow = _read_flow(request.cookies.get(FLOW_COOKIE))
        if error:
            raise OidcError(f"the identity provider answered {error[:64]!r}")
        if not code or not state or not hmac.compare_digest(state, flow["state"]):
            raise OidcError("state does not match this browser's sign-in")
        metadata = _provider(settings)
        with _client(settings, request) as client:
            tokens = client.fetch_token(
                metadata["token_endpoint"], code=code, code_verifier=flow["verifier"]
            )
        keys = httpx.get(metadata["jwks_uri"], verify=_verify(settings), timeout=10).json()
        claims = validate_id_token(
            str(tokens.get("id_token", "")), keys, issuer=settings.oidc_issuer,
            client_id=settings.oidc_client_id, nonce=flow["nonce"],
        )  # fmt: skip
    except AuthlibBaseError as exc:  # the provider refused the code exchange
        return _refused(request, db, None, f"token exchange refused: {exc}")
    except (OidcError, httpx.HTTPError, KeyError, ValueError) as exc:
        return _refused(request, db, None, str(exc))
    username = str(claims.get(settings.oidc_username_claim) or "")[:64]
    user = db.scalar(select(User).where(User.username == username)) if username else None
    if user is None or not user.active:
        return _refused(request, db, username or None, "no active account for this identity")
    data = sessions.start_session(db, user.id, user.password_hash, audit.client_address(request))
    audit.record(db, request, user, "login", object_type="user", object_id=user.id,
                 details={"method": "oidc", "issuer": settings.oidc_issuer})  # fmt: skip
    db.commit()
    response = RedirectResponse(flow["next"], status_code=303)
    set_cookie(
        response, request.scope, SESSION_COOKIE, sessions.encode_session(data), SESSION_MAX_S
    )
    delete_cookie(response, request.scope, FLOW_COOKIE)
    return response


def _refused(request: Request, db: SessionDep, username: str | None, why: str) -> Response:
    log.warning("single sign-on refused: %s", why)
    audit.record(db, request, None, "login_failed", username=username,
                 details={"method": "oidc", "reason": why[:200]})  # fmt: skip
    db.commit()
    response = _failure(request, 403)
    delete_cookie(response, request.scope, FLOW_COOKIE)
    return response


def _failure(request: Request, status: int) -> Response:
    """The sign-in page (password form still usable) with the reason's gist, not its detail."""
    return _login_page(request, "Single sign-on failed / 单点登录失败", "/worklist", status)
