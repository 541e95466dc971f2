"""FastAPI application: the radiologists' review UI and its JSON API.

Pages are server-rendered (Jinja2, autoescaped) with a little vendored vanilla JS; the JSON API
under /api/v1 is what that JS (and any other client) uses, described by /api/v1/openapi.json
(signed in; /docs is off). Everything except sign-in, /healthz, /metrics, the FHIR metadata and
static files needs a session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from starlette.responses import Response

from services.web import metrics
from services.web.access_log import install_query_redaction
from services.web.deps import AuthRequired, CsrfFailed, Forbidden, UserDep, csrf_protect
from services.web.middleware import WebMiddleware
from services.web.routes import (
    admin,
    auth,
    fhir,
    images,
    interactive,
    launch,
    oidc,
    pages,
    studies,
    worklist,
)
from services.web.templating import render
from shared.config import get_settings
from shared.db.session import get_engine
from shared.large_buffers import keep_large_buffers
from shared.observability.logs import configure_service_logging, route_to_root

STATIC_DIR = Path(__file__).resolve().parent / "static"


@asynccontextmanager
async def _lifespan(_: FastAPI) -> AsyncIterator[None]:
    # In the serving process only (not whoever imports this module), before the first request
    # starts the thread pool: the viewer renders full-size images (shared/large_buffers.py).
    keep_large_buffers()
    yield


app = FastAPI(
    title="medrega-pacs review API",
    version="0.1.0",
    description=(
        "Worklist, grounded AI draft review, edit, sign and delivery status for radiologists. "
        "Authenticate by signing in at /login (session cookie); send the CSRF token from "
        "GET /api/v1/session as the `X-CSRF-Token` header on every POST. This schema is at "
        "/api/v1/openapi.json (signed in)."
    ),
    dependencies=[Depends(csrf_protect)],
    # The interactive docs pages load their scripts from a CDN (none inside a hospital), and
    # the schema is served behind sign-in like the rest of the API.
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
    lifespan=_lifespan,
)
app.add_middleware(WebMiddleware)
install_query_redaction()
# Text or JSON lines (MEDREGA_LOG_FORMAT), uvicorn's own lines included.
configure_service_logging("web", get_settings())
route_to_root("uvicorn", "uvicorn.error", "uvicorn.access")
app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

for router in (
    auth.router,
    oidc.router,
    worklist.router,
    studies.router,
    images.router,
    interactive.router,
    admin.router,
    launch.router,
    fhir.router,
    pages.router,
):
    app.include_router(router)
app.add_exception_handler(fhir.FhirError, fhir.fhir_error_handler)


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


@app.exception_handler(AuthRequired)
def _auth_required(request: Request, _: AuthRequired) -> Response:
    if _is_api(request) or request.method != "GET":
        return JSONResponse({"detail": "authentication required"}, status_code=401)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


@app.exception_handler(Forbidden)
def _forbidden(request: Request, _: Forbidden) -> Response:
    if _is_api(request):
        return JSONResponse({"detail": "your role does not allow this"}, status_code=403)
    return render(request, "error.html", {"message_key": "forbidden"}, status_code=403)


@app.exception_handler(CsrfFailed)
def _csrf_failed(request: Request, _: CsrfFailed) -> Response:
    return JSONResponse({"detail": "missing or invalid CSRF token"}, status_code=403)


@app.exception_handler(RequestValidationError)
def _invalid(request: Request, exc: RequestValidationError) -> Response:
    # The reason, field by field, without echoing the submitted values back (they may be PHI).
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return JSONResponse({"detail": errors}, status_code=422)


@app.get("/api/v1/openapi.json", include_in_schema=False)
def openapi_schema(_: UserDep) -> dict[str, Any]:
    return app.openapi()


@app.get("/healthz", tags=["health"])
def healthz() -> dict[str, Any]:
    """Up when the database answers; no authentication (load balancers call it)."""
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means "not ready"
        raise HTTPException(
            status_code=503, detail=f"database unavailable: {type(exc).__name__}"
        ) from None
    return {"status": "ok"}


@app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
def prometheus_metrics() -> Response:
    """Prometheus text format; no authentication (scrapers), no patient data."""
    body = metrics.exposition(get_engine())
    return PlainTextResponse(body, media_type=metrics.CONTENT_TYPE)
