"""Launch URLs a RIS or PACS opens (httpx through the app): by accession number and by Study
Instance UID, sign-in first, a clear 404, a chooser for an accession shared by two studies."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from shared.db.models import AuditEvent, Study
from tests.web.factories import PASSWORD, DraftedStudy, make_drafted_study


def _accession(db: Session, study_id: int) -> str:
    study = db.get(Study, study_id)
    assert study is not None and study.accession_number
    return study.accession_number


def test_signed_out_launch_goes_to_sign_in_and_then_straight_to_the_study(
    client: TestClient, radiologist: object, drafted: DraftedStudy, db_session: Session
) -> None:
    target = f"/launch?accession={_accession(db_session, drafted.study_id)}"
    first = client.get(target, follow_redirects=False)
    assert first.status_code == 303
    assert first.headers["location"] == f"/login?next={quote(target, safe='')}"
    # The sign-in form (as the redirect showed it) carries the launch URL back.
    form = client.get(first.headers["location"])
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token and f'name="next" value="{target}"' in form.text.replace("&amp;", "&")
    signed_in = client.post(
        "/login",
        data={"username": "li.wei", "password": PASSWORD, "csrf_token": token.group(1),
              "next": target},
        follow_redirects=False,
    )  # fmt: skip
    assert signed_in.status_code == 303 and signed_in.headers["location"] == target
    again = client.get(target, follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"] == f"/studies/{drafted.study_id}"


def test_by_study_instance_uid_both_forms(rad_client: TestClient, drafted: DraftedStudy) -> None:
    for url in (
        f"/launch?study_uid={drafted.study_instance_uid}",
        f"/studies/by-uid/{drafted.study_instance_uid}",
    ):
        response = rad_client.get(url, follow_redirects=False)
        assert response.status_code == 303, url
        assert response.headers["location"] == f"/studies/{drafted.study_id}"
    opened = rad_client.get(f"/studies/by-uid/{drafted.study_instance_uid}")
    assert opened.status_code == 200 and opened.url.path == f"/studies/{drafted.study_id}"


def test_unknown_is_a_clear_404_and_a_bad_launch_a_400(
    rad_client: TestClient, drafted: DraftedStudy, db_session: Session
) -> None:
    unknown = rad_client.get("/launch?accession=NOPE123")
    assert unknown.status_code == 404
    assert "No study with accession number NOPE123 is here (yet)." in unknown.text
    rad_client.cookies.set("medrega_lang", "zh")
    chinese = rad_client.get("/launch?accession=NOPE123")
    assert chinese.status_code == 404 and "此处（尚）无检查号为 NOPE123 的检查。" in chinese.text
    rad_client.cookies.set("medrega_lang", "en")
    uid = rad_client.get("/studies/by-uid/1.2.3.999")
    assert uid.status_code == 404 and "Study Instance UID 1.2.3.999" in uid.text
    for url in ("/launch", f"/launch?accession=A&study_uid={drafted.study_instance_uid}"):
        bad = rad_client.get(url)
        assert bad.status_code == 400 and "exactly one of accession or study_uid" in bad.text
    launches = [e.details for e in db_session.query(AuditEvent).filter_by(action="launch")]
    assert {"by": "accession", "matches": 0} in launches


def test_an_accession_shared_by_two_studies_offers_both(
    rad_client: TestClient,
    drafted: DraftedStudy,
    db_session: Session,
    web_env: Path,
    tmp_path: Path,
) -> None:
    accession = _accession(db_session, drafted.study_id)
    other = make_drafted_study(db_session, web_env, tmp_path / "second", seed=7)
    second = db_session.get(Study, other.study_id)
    assert second is not None
    second.accession_number = accession
    db_session.commit()
    page = rad_client.get(f"/launch?accession={accession}", follow_redirects=False)
    assert page.status_code == 300
    assert f"2 studies have accession number {accession}" in page.text
    for study in (drafted, other):
        assert f'href="/studies/{study.study_id}"' in page.text
        assert study.study_instance_uid in page.text
