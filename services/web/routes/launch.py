"""Launch URLs a RIS or a PACS opens for a study it knows by its own identifiers:

    /launch?accession=<AccessionNumber>
    /launch?study_uid=<StudyInstanceUID>
    /studies/by-uid/<StudyInstanceUID>

Not signed in: the sign-in page, then straight back here and on to the study (the app's
AuthRequired handler keeps the whole URL in `next`). One study: 303 to its review page.
None: a 404 page that says what was looked for. An accession number shared by several studies
(a RIS may reuse one, or two orders were merged): a page listing them to choose from.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import select
from starlette.responses import Response

from services.web import audit
from services.web.deps import SessionDep, UserDep
from services.web.templating import render, request_language
from shared.db.models import Study

router = APIRouter(include_in_schema=False)
MAX_CHOICES = 20

Outcome = Literal["not_found", "ambiguous", "bad_request"]
WORDS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Open a study",
        "not_found": "No study with {what} {value} is here (yet).",
        "ambiguous": "{count} studies have {what} {value}. Choose one:",
        "bad_request": "Give exactly one of accession or study_uid, e.g. /launch?accession=A123.",
        "accession": "accession number",
        "study_uid": "Study Instance UID",
        "patient": "Patient",
        "patient_id": "Patient ID",
        "date": "Study date",
        "description": "Description",
    },
    "zh": {
        "title": "打开检查",
        "not_found": "此处（尚）无{what}为 {value} 的检查。",
        "ambiguous": "{count} 个检查的{what}为 {value}，请选择：",
        "bad_request": "请只给出 accession 或 study_uid 其中之一，例如 /launch?accession=A123。",
        "accession": "检查号",
        "study_uid": "检查实例 UID",
        "patient": "患者",
        "patient_id": "患者 ID",
        "date": "检查日期",
        "description": "描述",
    },
}


def _page(
    request: Request,
    outcome: Outcome,
    status: int,
    *,
    what: str = "",
    value: str = "",
    studies: list[Study] | None = None,
) -> Response:
    words = dict(WORDS[request_language(request)])
    words["message"] = words[outcome].format(
        what=words.get(what, what), value=value, count=len(studies or [])
    )
    context = {"words": words, "outcome": outcome, "studies": studies or []}
    return render(request, "launch.html", context, status_code=status)


def _open(
    request: Request, db: SessionDep, user: UserDep, what: str, value: str, studies: list[Study]
) -> Response:
    audit.record(db, request, user, "launch", details={"by": what, "matches": len(studies)})
    db.commit()
    if len(studies) == 1:
        return RedirectResponse(f"/studies/{studies[0].id}", status_code=303)
    if not studies:
        return _page(request, "not_found", 404, what=what, value=value)
    return _page(request, "ambiguous", 300, what=what, value=value, studies=studies)


@router.get("/launch")
def launch(
    request: Request,
    db: SessionDep,
    user: UserDep,
    accession: Annotated[str | None, Query(max_length=64)] = None,
    study_uid: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    accession = (accession or "").strip() or None
    study_uid = (study_uid or "").strip() or None
    if (accession is None) == (study_uid is None):
        return _page(request, "bad_request", 400)
    if study_uid is not None:
        return by_uid(request, study_uid, db, user)
    studies = list(
        db.scalars(
            select(Study)
            .where(Study.accession_number == accession)
            .order_by(Study.study_date.desc().nulls_last(), Study.id.desc())
            .limit(MAX_CHOICES)
        )
    )
    return _open(request, db, user, "accession", str(accession), studies)


@router.get("/studies/by-uid/{study_uid}")
def by_uid(request: Request, study_uid: str, db: SessionDep, user: UserDep) -> Response:
    study = db.scalar(select(Study).where(Study.study_instance_uid == study_uid.strip()))
    return _open(request, db, user, "study_uid", study_uid, [study] if study else [])
