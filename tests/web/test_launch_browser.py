"""Launch URLs in Debian's Chromium against the app under uvicorn: a RIS opens
/launch?accession=… signed out → sign-in page → the study; by Study Instance UID straight to the
study; an unknown accession shows a 404 page; a shared accession shows a chooser that opens the
chosen study. Screenshots go to test-artifacts/ (git-ignored)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from shared.db.models import Study
from tests.web.factories import PASSWORD, DraftedStudy, make_drafted_study
from tests.web.test_browser import ARTIFACTS, chromium, web_server

__all__ = ["chromium"]  # the fixture, re-exported for this module

pytestmark = pytest.mark.slow


def test_a_ris_launch_url_signs_in_then_opens_the_study_in_chromium(
    chromium: object,
    radiologist: object,
    drafted: DraftedStudy,
    db_session: Session,
    web_env: Path,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import Browser, expect

    assert isinstance(chromium, Browser)
    ARTIFACTS.mkdir(exist_ok=True)
    study = db_session.get(Study, drafted.study_id)
    assert study is not None and study.accession_number
    accession = study.accession_number
    # Two studies under one accession number, to choose from.
    shared = [make_drafted_study(db_session, web_env, tmp_path / "more", seed=s) for s in (21, 22)]
    for other in shared:
        row = db_session.get(Study, other.study_id)
        assert row is not None
        row.accession_number = "DUP-ACC-1"
    db_session.commit()

    with web_server({}, tmp_path / "web.log") as base:
        page = chromium.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        page.goto(f"{base}/launch?accession={accession}")
        expect(page).to_have_url(f"{base}/login?next=%2Flaunch%3Faccession%3D{accession}")
        page.fill("#username", "li.wei")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        expect(page).to_have_url(f"{base}/studies/{drafted.study_id}")
        expect(page.locator("#banner")).to_contain_text("AI draft")
        page.wait_for_load_state("networkidle")  # the key image, before the screenshot
        page.screenshot(path=str(ARTIFACTS / "launch-study.png"))

        page.goto(f"{base}/launch?study_uid={shared[0].study_instance_uid}")
        expect(page).to_have_url(f"{base}/studies/{shared[0].study_id}")

        response = page.goto(f"{base}/launch?accession=NO-SUCH-ACC")
        assert response is not None and response.status == 404
        expect(page.locator(".launch-message")).to_have_text(
            "No study with accession number NO-SUCH-ACC is here (yet)."
        )
        page.screenshot(path=str(ARTIFACTS / "launch-not-found.png"))

        response = page.goto(f"{base}/launch?accession=DUP-ACC-1")
        assert response is not None and response.status == 300
        choices = page.locator("#launch-choices tbody tr")
        expect(choices).to_have_count(2)
        expect(page.locator(".launch-message")).to_contain_text("2 studies have accession number")
        page.screenshot(path=str(ARTIFACTS / "launch-choose.png"))
        choices.nth(1).locator("a").click()
        expect(page).to_have_url(
            re.compile(rf"{base}/studies/({shared[0].study_id}|{shared[1].study_id})$")
        )
        assert not errors, errors
