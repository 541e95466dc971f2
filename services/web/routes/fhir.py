"""FHIR R4 read access for the EHR: a study's report as a DiagnosticReport.

    GET /fhir/r4/DiagnosticReport/{StudyInstanceUID}
    GET /fhir/r4/DiagnosticReport?identifier=[system|]value         (report id or accession)
    GET /fhir/r4/DiagnosticReport?based-on:identifier=[system|]ACC  (the order's accession)

Signed in like every other route (session cookie); errors are OperationOutcomes, not pages or
redirects, and every answer is `application/fhir+json`. Reads are audited.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import or_, select
from starlette.responses import Response

from services.web import audit
from services.web.deps import AuthRequired, SessionDep, current_user
from shared.db.models import Study, User
from shared.fhir.codes import REPORT_IDENTIFIER_SYSTEM
from shared.fhir.diagnostic_report import FhirBuildError, configured_report_json
from shared.fhir.source import ehr_version

FHIR_JSON = "application/fhir+json; charset=utf-8"
MAX_RESULTS = 50
CAPABILITY_DATE = "2026-11-30"  # when what this server does last changed

router = APIRouter(prefix="/fhir/r4", include_in_schema=False)


class FhirError(Exception):
    def __init__(self, status: int, code: str, text: str) -> None:
        super().__init__(text)
        self.status, self.code, self.text = status, code, text


def fhir_response(body: dict[str, Any], status: int = 200) -> Response:
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(content, status_code=status, media_type=FHIR_JSON)


def outcome(error: FhirError) -> Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": error.code, "diagnostics": error.text}],
    }
    return fhir_response(body, error.status)


def fhir_user(request: Request, db: SessionDep) -> User:
    """The signed-in user; a FHIR client gets 401 (OperationOutcome), not the sign-in page."""
    try:
        return current_user(request, db)
    except AuthRequired:
        raise FhirError(401, "login", "authentication required: sign in first") from None


FhirUserDep = Annotated[User, Depends(fhir_user)]


def _report(db: SessionDep, study: Study) -> dict[str, Any] | None:
    version = ehr_version(db, study)
    if version is None:
        return None
    try:
        return configured_report_json(version)
    except FhirBuildError as exc:
        raise FhirError(500, "exception", f"the report cannot be shown as FHIR: {exc}") from exc


@router.get("/metadata")
def capability_statement() -> Response:
    """What this server does (no sign-in: FHIR clients read it first; it holds no patient data)."""
    search = [
        {"name": "identifier", "type": "token"},
        {"name": "based-on", "type": "reference",
         "documentation": "with :identifier, the order's accession number"},
    ]  # fmt: skip
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": CAPABILITY_DATE,
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "implementation": {"description": "medrega-pacs: AI-drafted, signed radiology reports"},
        "rest": [
            {
                "mode": "server",
                "security": {"description": "Sign in at /login (session cookie)."},
                "resource": [
                    {
                        "type": "DiagnosticReport",
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                        "searchParam": search,
                    }
                ],
            }
        ],
    }
    return fhir_response(statement)


@router.get("/DiagnosticReport/{report_id}")
def read_report(request: Request, report_id: str, db: SessionDep, user: FhirUserDep) -> Response:
    study = db.scalar(select(Study).where(Study.study_instance_uid == report_id))
    report = _report(db, study) if study is not None else None
    if study is None or report is None:
        raise FhirError(404, "not-found", f"no DiagnosticReport {report_id!r}")
    audit.record(db, request, user, "fhir_read", object_type="study", object_id=study.id,
                 study_id=study.id)  # fmt: skip
    db.commit()
    return fhir_response(report)


def _token(value: str) -> tuple[str | None, str]:
    """A FHIR token parameter: `system|value`, `|value` (no system) or `value` (any system)."""
    if "|" in value:
        system, _, code = value.partition("|")
        return system, code
    return None, value


@router.get("/DiagnosticReport")
def search_reports(
    request: Request,
    db: SessionDep,
    user: FhirUserDep,
    identifier: Annotated[str | None, Query(max_length=200)] = None,
    based_on: Annotated[str | None, Query(alias="based-on:identifier", max_length=200)] = None,
) -> Response:
    if identifier is None and based_on is None:
        raise FhirError(400, "required", "search by identifier or based-on:identifier")
    conditions = []
    if identifier is not None:
        system, value = _token(identifier)
        if system in (None, REPORT_IDENTIFIER_SYSTEM):
            conditions.append(Study.study_instance_uid == value)
        if system in (None, ""):  # the accession number carries no system
            conditions.append(Study.accession_number == value)
    if based_on is not None:
        system, value = _token(based_on)
        if system in (None, ""):
            conditions.append(Study.accession_number == value)
    studies = (
        db.scalars(select(Study).where(or_(*conditions)).order_by(Study.id).limit(MAX_RESULTS))
        .unique()
        .all()
        if conditions
        else []
    )
    entries = []
    for study in studies:
        report = _report(db, study)
        if report is not None:
            entries.append({"fullUrl": f"{request.base_url}fhir/r4/DiagnosticReport/{report['id']}",
                            "resource": report, "search": {"mode": "match"}})  # fmt: skip
    audit.record(db, request, user, "fhir_search", details={"count": len(entries)})
    db.commit()
    return fhir_response(
        {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}
    )


def fhir_error_handler(request: Request, exc: Exception) -> Response:
    """Registered on the app for FhirError (raised by routes and by `fhir_user`)."""
    assert isinstance(exc, FhirError)
    return outcome(exc)
