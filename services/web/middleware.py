"""One pure-ASGI middleware for what every response needs.

- refuses request bodies over MAX_BODY_BYTES (413) before the route reads them — by the declared
  Content-Length, and by counting for chunked bodies;
- adds security headers (CSP without inline script, no framing, no sniffing);
- writes the refreshed session cookie a dependency asked for (sliding idle timeout);
- counts requests for /metrics.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.web import metrics
from services.web.cookies import session_cookie_header
from services.web.web_settings import MAX_BODY_BYTES

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


def _too_large_body() -> bytes:
    return json.dumps({"detail": f"request body larger than {MAX_BODY_BYTES} bytes"}).encode()


class WebMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            await self._send_413(send)
            metrics.observe_request(scope, 413, time.perf_counter() - started)
            return

        received = 0
        response_started = False
        refused = False
        status_code = 500

        async def limited_receive() -> Message:
            nonlocal received, refused, response_started, status_code
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES and not response_started:
                    # Answer now and tell the app the client went away: whatever it does with
                    # that (FastAPI turns it into a 400) is swallowed below.
                    refused = True
                    response_started = True
                    status_code = 413
                    await self._send_413(send)
                    return {"type": "http.disconnect"}
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal response_started, status_code
            if refused:
                return
            if message["type"] == "http.response.start":
                response_started = True
                status_code = int(message["status"])
                extra: list[tuple[bytes, bytes]] = list(SECURITY_HEADERS)
                state: dict[str, Any] = scope.get("state") or {}
                refreshed = state.get("refresh_cookie")
                if refreshed and not state.get("session_replaced"):
                    extra.append((b"set-cookie", session_cookie_header(scope, refreshed).encode()))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except Exception:
            if not refused:
                raise
        finally:
            metrics.observe_request(scope, status_code, time.perf_counter() - started)

    @staticmethod
    async def _send_413(send: Send) -> None:
        body = _too_large_body()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *SECURITY_HEADERS,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
