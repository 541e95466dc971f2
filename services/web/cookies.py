"""Cookie attributes in one place: HttpOnly, SameSite=Lax, Secure outside plain-HTTP test rigs.

`Secure` is set in production and whenever the request came over HTTPS; development and test
servers on http://127.0.0.1 would otherwise never get their cookie back. SameSite=Lax keeps
cross-site POSTs cookie-less while links from the RIS into a study still open signed in.
"""

from __future__ import annotations

from http.cookies import SimpleCookie
from typing import Any

from starlette.responses import Response

from services.web.web_settings import SESSION_COOKIE, SESSION_MAX_S
from shared.config import get_settings


def _secure(scope: Any) -> bool:
    return get_settings().environment == "production" or scope.get("scheme") == "https"


def session_cookie_header(scope: Any, value: str) -> str:
    cookie: SimpleCookie = SimpleCookie()
    cookie[SESSION_COOKIE] = value
    morsel = cookie[SESSION_COOKIE]
    morsel["path"] = "/"
    morsel["httponly"] = True
    morsel["samesite"] = "lax"
    morsel["max-age"] = SESSION_MAX_S
    if _secure(scope):
        morsel["secure"] = True
    return morsel.OutputString()


def set_cookie(
    response: Response, scope: Any, name: str, value: str, max_age: int, *, http_only: bool = True
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=http_only,
        samesite="lax",
        secure=_secure(scope),
    )


def delete_cookie(response: Response, scope: Any, name: str) -> None:
    response.delete_cookie(name, path="/", httponly=True, samesite="lax", secure=_secure(scope))
