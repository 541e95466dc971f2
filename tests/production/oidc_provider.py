"""A local OpenID Connect provider for tests: discovery, authorize (code + PKCE S256 + nonce),
token (client_secret_basic), JWKS; RS256 ID tokens; served over TLS with the test's CA.

It signs in whoever `login_as` names without a form (the person's sign-in at the provider is not
what is under test), and can hand out a bad ID token on purpose (`fault`) to show the relying
party refuses it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

Fault = Literal["none", "wrong_nonce", "wrong_audience", "foreign_key", "expired"]


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    nonce: str
    challenge: str
    username: str


@dataclass
class OidcProvider:
    cert: Path
    key: Path
    client_id: str = "medrega"
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    login_as: str = "li.wei"
    fault: Fault = "none"
    signing_key: RSAKey = field(
        default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "k1"})
    )
    token_requests: int = 0
    _grants: dict[str, _Grant] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None

    @property
    def issuer(self) -> str:
        assert self._server is not None
        return f"https://localhost:{self._server.server_address[1]}"

    def start(self) -> OidcProvider:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet test output
                pass

            def do_GET(self) -> None:
                provider._get(self)

            def do_POST(self) -> None:
                provider._post(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- endpoints -------------------------------------------------------------------------

    def _get(self, request: BaseHTTPRequestHandler) -> None:
        url = urlsplit(request.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/.well-known/openid-configuration":
            return _json(request, 200, {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            })  # fmt: skip
        if url.path == "/jwks":
            return _json(request, 200, KeySet([self.signing_key]).as_dict(private=False))
        if url.path == "/authorize":
            return self._authorize(request, query)
        return _json(request, 404, {"error": "not_found"})

    def _authorize(self, request: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
        if query.get("client_id") != self.client_id or query.get("response_type") != "code":
            return _json(request, 400, {"error": "unauthorized_client"})
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            return _json(request, 400, {"error": "invalid_request", "detail": "PKCE S256 needed"})
        if "openid" not in query.get("scope", "").split() or not query.get("nonce"):
            return _json(request, 400, {"error": "invalid_request", "detail": "openid + nonce"})
        code = secrets.token_urlsafe(24)
        self._grants[code] = _Grant(self.client_id, query["redirect_uri"], query["nonce"],
                                    query["code_challenge"], self.login_as)  # fmt: skip
        target = query["redirect_uri"] + "?" + urlencode({"code": code, "state": query["state"]})
        request.send_response(302)
        request.send_header("Location", target)
        request.send_header("Content-Length", "0")
        request.end_headers()

    def _post(self, request: BaseHTTPRequestHandler) -> None:
        if urlsplit(request.path).path != "/token":
            return _json(request, 404, {"error": "not_found"})
        self.token_requests += 1
        expected = (
            "Basic " + base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        )
        if request.headers.get("Authorization") != expected:
            return _json(request, 401, {"error": "invalid_client"})
        length = int(request.headers.get("Content-Length", "0"))
        form = {k: v[0] for k, v in parse_qs(request.rfile.read(length).decode()).items()}
        grant = self._grants.pop(form.get("code", ""), None)  # a code works once
        if grant is None or form.get("grant_type") != "authorization_code":
            return _json(request, 400, {"error": "invalid_grant"})
        if form.get("redirect_uri") != grant.redirect_uri:
            return _json(request, 400, {"error": "invalid_grant", "detail": "redirect_uri"})
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        if challenge.rstrip(b"=").decode() != grant.challenge:
            return _json(request, 400, {"error": "invalid_grant", "detail": "PKCE verifier"})
        return _json(request, 200, {
            "access_token": secrets.token_urlsafe(24), "token_type": "Bearer",
            "expires_in": 300, "id_token": self._id_token(grant),
        })  # fmt: skip

    def _id_token(self, grant: _Grant) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer, "sub": f"sub-{grant.username}", "aud": grant.client_id,
            "iat": now, "exp": now + 300, "nonce": grant.nonce,
            "preferred_username": grant.username,
        }  # fmt: skip
        key = self.signing_key
        if self.fault == "wrong_nonce":
            claims["nonce"] = "not-" + grant.nonce
        elif self.fault == "wrong_audience":
            claims["aud"] = "another-client"
        elif self.fault == "expired":
            claims["iat"], claims["exp"] = now - 3600, now - 600
        elif self.fault == "foreign_key":  # same kid, a key the JWKS does not hold
            key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
        return jwt.encode({"alg": "RS256", "kid": "k1"}, claims, key)


def _json(request: BaseHTTPRequestHandler, status: int, body: object) -> None:
    data = json.dumps(body).encode()
    request.send_response(status)
    request.send_header("Content-Type", "application/json")
    request.send_header("Content-Length", str(len(data)))
    request.end_headers()
    request.wfile.write(data)
