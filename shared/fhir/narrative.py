"""The report's words for a FHIR reader: the resource narrative (both languages, XHTML) and one
HTML document per language for DiagnosticReport.presentedForm."""

from __future__ import annotations

import base64
import hashlib
from html import escape
from typing import Any

from shared.fhir.codes import LANGUAGE_TAG
from shared.reports.domain import Language, ReportVersion

HEADINGS: dict[Language, dict[str, str]] = {
    "en": {
        "title": "Radiology report",
        "findings": "Findings",
        "impression": "Impression",
        "preliminary": "AI draft — not for diagnostic use until signed",
        "final": "Signed",
        "corrected": "Corrected after signing",
        "signed_by": "Signed by",
    },
    "zh": {
        "title": "影像学报告",
        "findings": "影像所见",
        "impression": "影像结论",
        "preliminary": "AI 草稿——签发前不得用于诊断",
        "final": "已签发",
        "corrected": "签发后已更正",
        "signed_by": "签发医师",
    },
}


def _section_html(version: ReportVersion, language: Language, status: str) -> str:
    words = HEADINGS[language]
    parts = [f"<h2>{escape(words['title'])}</h2>", f"<p><b>{escape(words[status])}</b></p>"]
    for section in ("findings", "impression"):
        text = version.section_text(section, language)
        if text:
            parts.append(f"<h3>{escape(words[section])}</h3><p>{escape(text)}</p>")
    if version.signer is not None:
        signed = version.signer.signed_at.isoformat(timespec="minutes")
        parts.append(
            f"<p>{escape(words['signed_by'])}: {escape(version.signer.name_pn.replace('^', ' '))}"
            f" ({escape(signed)})</p>"
        )
    return "".join(parts)


def narrative_div(version: ReportVersion, languages: tuple[Language, ...], status: str) -> str:
    """Resource.text.div: every language, each block tagged with its language."""
    blocks = "".join(
        f'<div lang="{LANGUAGE_TAG[lang]}" xml:lang="{LANGUAGE_TAG[lang]}">'
        f"{_section_html(version, lang, status)}</div>"
        for lang in languages
    )
    return f'<div xmlns="http://www.w3.org/1999/xhtml">{blocks}</div>'


def presented_form(
    version: ReportVersion, language: Language, status: str, created: str
) -> dict[str, Any]:
    """One language's report as an HTML attachment, with the size and SHA-1 FHIR asks for."""
    tag = LANGUAGE_TAG[language]
    html = (
        f'<!DOCTYPE html><html lang="{tag}"><head><meta charset="utf-8">'
        f"<title>{escape(HEADINGS[language]['title'])}</title></head>"
        f"<body>{_section_html(version, language, status)}</body></html>"
    ).encode()
    return {
        "contentType": "text/html",
        "language": tag,
        "data": base64.b64encode(html).decode("ascii"),
        "size": len(html),
        "hash": base64.b64encode(hashlib.sha1(html, usedforsecurity=False).digest()).decode(
            "ascii"
        ),
        "title": HEADINGS[language]["title"],
        "creation": created,
    }
