"""Push one report version's DiagnosticReport to the EHR's FHIR server (delivery kind 'fhir').

`PUT [base]/DiagnosticReport?identifier=<system>|<StudyInstanceUID>`: a conditional update, so
the server keeps one resource per study whatever the retries — the first version creates it,
later versions (final, corrected) and repeated attempts update it. The order rules of
shared.reports.deliveries apply as for the SR and the ORU: a preliminary never follows a final.
Only a 200/201 is delivered; 408, 429, 5xx and network trouble are retried; any other answer
(invalid, unauthorised, several matches: 412) fails the delivery with the server's issue codes.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from sqlalchemy.orm import Session

from shared.config import get_settings
from shared.delivery_policy import DeliveryError
from shared.fhir.diagnostic_report import FhirBuildError, configured_report_json
from shared.fhir.source import with_sop_classes
from shared.reports.domain import ReportVersion

FHIR_JSON = "application/fhir+json"
RETRIED_STATUSES = frozenset({408, 429})


class FhirUnavailable(DeliveryError):
    """No answer, or one that says to try again later."""

    transient = True


class FhirRefused(DeliveryError):
    """The server refused the report; sending it again unchanged would not help."""

    transient = False


class FhirNotBuildable(DeliveryError):
    """The stored version cannot become a valid DiagnosticReport."""

    transient = False


def _issue_codes(response: httpx.Response) -> str:
    """The OperationOutcome's issue codes (never its diagnostics: they may quote the report)."""
    try:
        issues = response.json().get("issue", [])
        codes = sorted({str(i.get("code")) for i in issues if i.get("code")})
    except (ValueError, AttributeError):
        codes = []
    return ", ".join(codes) or "no OperationOutcome"


def put_report(
    report: dict[str, Any], base_url: str, *, token: str | None, timeout_s: float
) -> tuple[str, str | None]:
    """Conditional update of `report` (its first identifier); returns (HTTP status, Location)."""
    identifier = report["identifier"][0]
    body = {key: value for key, value in report.items() if key != "id"}  # the server's id
    headers = {"Content-Type": f"{FHIR_JSON}; charset=utf-8", "Accept": FHIR_JSON}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = httpx.put(
            f"{base_url.rstrip('/')}/DiagnosticReport",
            params={"identifier": f"{identifier['system']}|{identifier['value']}"},
            content=json.dumps(body, ensure_ascii=False).encode(),
            headers=headers,
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:  # connect, read, timeouts: the server may come back
        raise FhirUnavailable(f"FHIR server unreachable: {type(exc).__name__}: {exc}") from exc
    status = response.status_code
    if status in (200, 201):
        return str(status), response.headers.get("Location")
    detail = f"FHIR server answered HTTP {status} ({_issue_codes(response)})"
    if status in RETRIED_STATUSES or status >= 500:
        raise FhirUnavailable(detail, ack_code=str(status))
    raise FhirRefused(detail, ack_code=str(status))


def push_version(
    session: Session, version: ReportVersion, study_id: int, destination: str
) -> tuple[str, str | None]:
    """Build the version's DiagnosticReport and PUT it to `destination` (the FHIR base URL)."""
    try:
        report = configured_report_json(with_sop_classes(session, study_id, version))
    except FhirBuildError as exc:
        raise FhirNotBuildable(f"DiagnosticReport not buildable: {exc}") from exc
    settings = get_settings()
    token = settings.fhir_server_token.get_secret_value() if settings.fhir_server_token else None
    return put_report(report, destination, token=token, timeout_s=settings.fhir_timeout_s)
