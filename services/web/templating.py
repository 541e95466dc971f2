"""Jinja2 templates (autoescaped) with the context every page needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from services.web import i18n
from services.web.web_settings import LANGUAGE_COOKIE
from shared.config import get_settings

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
templates = Jinja2Templates(directory=str(TEMPLATE_DIR))


def person_name(value: str | None) -> str:
    """DICOM PN for display: "Family^Given=表意^名" → "Family Given 表意名"; several names
    (DICOM's `\\` between values) are shown joined with "; "."""
    names = []
    for name in (value or "").split("\\"):
        groups = name.split("=")
        parts = [
            " ".join(g.replace("^", " ").split()) if i == 0 else g.replace("^", "").strip()
            for i, g in enumerate(groups)
        ]
        names.append(" ".join(p for p in parts if p))
    return "; ".join(n for n in names if n)


def dicom_date(value: str | None) -> str:
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or ""


templates.env.filters["pn"] = person_name
templates.env.filters["da"] = dicom_date


def request_language(request: Request) -> i18n.Lang:
    return i18n.language(request.cookies.get(LANGUAGE_COOKIE))


def render(
    request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200
) -> Response:
    lang = request_language(request)
    labels = i18n.table(lang)
    base = {
        "lang": lang,
        "t": labels,
        # For the browser: both tables, so the language toggle needs no round trip.
        "labels_all": {"en": i18n.table("en"), "zh": i18n.table("zh")},
        "user": getattr(request.state, "user", None),
        "csrf_token": getattr(request.state, "csrf_token", ""),
        "institution": get_settings().institution_name,
    }
    response = templates.TemplateResponse(
        request, name, {**base, **(context or {})}, status_code=status_code
    )
    response.headers["Cache-Control"] = "no-store"  # pages carry patient data
    return response
