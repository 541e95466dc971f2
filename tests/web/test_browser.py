"""The review UI in Debian's Chromium, on the whole real pipeline.

storescu → Orthanc → listener → worker drafts with the bundled model → the radiologist signs in,
opens the study, checks the boxes, rejects a finding, edits a sentence, switches to Chinese, uses
Locate and Identify (answered by the worker), signs → the FINAL SR is in Orthanc and the `F` ORU
at the RIS sink. Screenshots go to test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pydicom
import pytest
from sqlalchemy import select

from shared.config import REPO_ROOT
from shared.db.models import DeliveryKind, DeliveryState, Report, Study, StudyState, UserRole
from shared.hl7.oru_read import read_oru
from tests.support.listener_process import free_port
from tests.web.factories import PASSWORD, make_drafted_study, make_user
from tests.worker.conftest import Pipeline, phantom, pipeline_factory, storescu, wait_for

__all__ = ["pipeline_factory"]  # the fixture, re-exported for this module

pytestmark = pytest.mark.slow

ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip


@contextmanager
def web_server(env: dict[str, str], log_path: Path) -> Iterator[str]:
    """uvicorn serving the app with the pipeline's settings (ports, storage, queue prefix)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "services.web.app:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        cwd=REPO_ROOT, env={**os.environ, **env}, stdout=open(log_path, "ab"),
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(base + "/healthz"), 30, "web server up")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=15)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def chromium() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is missing: `make install` installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


def test_radiologist_reviews_edits_and_signs_in_the_browser(
    pipeline_factory, chromium, tmp_path: Path
) -> None:
    from playwright.sync_api import Browser, expect

    assert isinstance(chromium, Browser)
    ARTIFACTS.mkdir(exist_ok=True)
    pipeline: Pipeline = pipeline_factory()
    assert pipeline.orthanc is not None and pipeline.sink is not None
    written = phantom("cxr", tmp_path / "in", chinese=True, abnormal=True)
    storescu(written.files, pipeline.orthanc.dicom_port, pipeline.orthanc.ae_title)
    uid = written.study_instance_uid
    try:
        wait_for(lambda: pipeline.delivered(uid), 180, "draft stored and delivered")
    except AssertionError:
        print(pipeline.diagnostics())
        raise
    with pipeline.session() as session:
        make_user(session, "li.wei", UserRole.RADIOLOGIST, full_name="Li Wei",
                  dicom_person_name="Li^Wei")  # fmt: skip
        study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        assert study is not None
        study_id = study.id
        # Neighbours in the worklist, so its order and badges show (critical first).
        for seed, critical in ((11, True), (12, False)):
            make_drafted_study(session, pipeline.storage_dir, tmp_path / "more", seed=seed,
                               critical=critical, received_minutes_ago=30 * seed)  # fmt: skip
        ct = make_drafted_study(session, pipeline.storage_dir, tmp_path / "more", domain="chest_ct",
                                seed=13, received_minutes_ago=200)  # fmt: skip
    draft = pipeline.current_report(uid)
    assert draft is not None and draft.version == 1

    with web_server(pipeline.worker_env, pipeline.log_dir / "web.log") as base:
        page = chromium.new_page(viewport={"width": 1600, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        # Sign in (the worklist redirects there first), see the study in the worklist.
        page.goto(base + "/worklist")
        expect(page).to_have_url(f"{base}/login?next=%2Fworklist")
        page.fill("#username", "li.wei")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        row = page.locator(f'#worklist-body tr[data-study-id="{study_id}"]')
        expect(row).to_be_visible()
        expect(row.locator(".pill")).to_have_text("Draft ready")
        page.wait_for_timeout(300)
        page.screenshot(path=str(ARTIFACTS / "worklist.png"))

        # Open it: the key image and a box per grounded finding.
        row.click()
        expect(page).to_have_url(f"{base}/studies/{study_id}")
        expect(page.locator("#banner")).to_contain_text(
            "AI draft — not for diagnostic use until signed"
        )
        boxes = page.locator("#boxes g.fbox")
        expect(boxes.first).to_be_visible()
        with pipeline.session() as session:
            findings = session.merge(draft).findings
            on_key = [
                f
                for f in findings
                if f.sop_instance_uid == findings[0].sop_instance_uid and f.x1 is not None
            ]
        assert boxes.count() == len(on_key)
        expect(page.locator("#viewer[data-loaded]")).to_have_count(1, timeout=30_000)

        # Hover a grounded sentence: its box lights up, the others dim.
        sentence = page.locator('#sec-findings .sentence[data-ordinals="[0]"]')
        sentence.hover()
        expect(page.locator('#boxes g.fbox[data-ordinal="0"]')).to_have_class(_has("hl"))
        if boxes.count() > 1:
            expect(boxes.nth(1)).to_have_class(_has("dim"))
        expect(sentence).to_have_class(_has("hl"))
        page.screenshot(path=str(ARTIFACTS / "review.png"))

        # Reject the last finding (a version is saved), then edit a sentence's text.
        last = len(findings) - 1
        finding_row = page.locator(f'#findings li[data-ordinal="{last}"]')
        finding_row.get_by_role("button", name="Reject").click()
        expect(finding_row).to_have_class(_has("rv-rejected"))
        expect(page.locator("#report-version")).to_contain_text("Version 2")
        first = page.locator("#sec-findings .sentence").first
        first.hover()
        first.get_by_title("Edit").click()
        page.fill("#sec-findings textarea", "Edited in the browser: findings reviewed.")
        page.get_by_role("button", name="Save").click()
        expect(page.locator("#sec-findings .sentence").first).to_contain_text(
            "Edited in the browser"
        )
        expect(page.locator("#report-version")).to_contain_text("Version 3")

        # 中文: labels, banner and the report switch together.
        page.click('[data-set-lang="zh"]')
        expect(page.locator("#banner strong")).to_have_text("AI 草稿——签发前不得用于诊断")
        expect(page.locator("#sign-btn")).to_have_text("签发报告")
        expect(page.locator('#sec-findings .sentence[data-ordinals="[1]"] .stext')).to_have_text(
            findings[1].sentence_zh
        )

        # Locate (Text→Region) by a Chinese name, then Identify (Region→Text) a drawn box.
        page.fill("#locate-query", "右肺")
        page.click("#locate-btn")
        expect(page.locator("#tool-layer g.toolbox")).to_have_count(1, timeout=60_000)
        expect(page.locator("#tool-msg")).to_contain_text("右肺")
        page.click("#identify-btn")
        image = page.locator("#frame-image").bounding_box()
        assert image is not None
        page.mouse.move(image["x"] + image["width"] * 0.22, image["y"] + image["height"] * 0.3)
        page.mouse.down()
        page.mouse.move(
            image["x"] + image["width"] * 0.4, image["y"] + image["height"] * 0.6, steps=5
        )
        page.mouse.up()
        expect(page.locator("#tool-msg")).to_contain_text("识别: ", timeout=30_000)
        expect(page.locator("#tool-msg")).not_to_contain_text("…")
        page.screenshot(path=str(ARTIFACTS / "review-zh-tools.png"))

        # Adjust the lesion's box by dragging its lower-right corner (a new version).
        lesion_row = page.locator('#findings li[data-ordinal="0"]')
        page.click("#identify-btn")  # leave Identify mode
        lesion_row.get_by_role("button", name="调整框").click()
        handle = page.locator('#boxes g.fbox[data-ordinal="0"] circle[data-corner="se"]')
        corner = handle.bounding_box()
        assert corner is not None
        page.mouse.move(corner["x"] + corner["width"] / 2, corner["y"] + corner["height"] / 2)
        page.mouse.down()
        page.mouse.move(corner["x"] + 40, corner["y"] + 30, steps=4)
        page.mouse.up()
        page.get_by_role("button", name="保存框").click()
        expect(lesion_row).to_have_class(_has("rv-adjusted"))
        expect(page.locator("#report-version")).to_contain_text("版本 4")

        # Sign, with confirmation.
        page.click("#sign-btn")
        expect(page.locator("#sign-dialog")).to_be_visible()
        page.click("#sign-confirm")
        expect(page.locator("#banner")).to_have_class(_has("banner-final"))
        expect(page.locator("#signed-by")).to_contain_text("Li Wei")
        expect(page.locator("#amend-btn")).to_be_visible()  # signed: read-only until amended
        expect(page.locator("#findings button")).to_have_count(0)
        expect(page.locator("#deliveries .dl-delivered")).to_have_count(4, timeout=90_000)
        page.screenshot(path=str(ARTIFACTS / "review-signed.png"))

        # A CT study: slices scroll (keyboard), lung window preset.
        page.goto(f"{base}/studies/{ct.study_id}")
        expect(page.locator("#slicebar")).to_be_visible()
        expect(page.locator("#slice-label")).to_have_text("2 / 3")
        page.locator("#viewer").press("ArrowDown")
        expect(page.locator("#slice-label")).to_have_text("3 / 3")
        page.select_option("#preset", "lung")
        assert "preset=lung" in (page.locator("#frame-image").get_attribute("href") or "")
        expect(page.locator("#viewer[data-loaded]")).to_have_count(1, timeout=30_000)
        assert not errors, errors

    signed = pipeline.current_report(uid)
    assert signed is not None and signed.status == "signed" and signed.version == 5
    with pipeline.session() as session:
        signed = session.merge(signed)
        assert session.get(Study, study_id).state == StudyState.SIGNED  # type: ignore[union-attr]
        # The SR draws the boxes of findings; normal regions are said in its narrative only.
        kept = [f for f in signed.findings if f.x1 is not None and f.finding_code is not None]
        lesion = signed.findings[0]
        assert (
            lesion.review == "adjusted"
            and lesion.x2 > findings[0].x2
            and lesion.y2 > findings[0].y2
        )
        assert len(signed.findings) == len(findings) - 1
        sr_delivery = next(d for d in signed.deliveries if d.kind == DeliveryKind.SR)
        hl7_delivery = next(d for d in signed.deliveries if d.kind == DeliveryKind.HL7)
        assert sr_delivery.state == hl7_delivery.state == DeliveryState.DELIVERED
        edited_sentence = signed.sentences[0]["en"]

    # The FINAL / VERIFIED SR reached the PACS, signed by the radiologist, after the draft.
    client = pipeline.orthanc.client
    ids = client.post_json(
        "/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": sr_delivery.message_id}}
    )
    assert len(ids) == 1, "the final SR is not in the PACS"
    sr_path = tmp_path / "final-sr.dcm"
    sr_path.write_bytes(client._request("GET", f"/instances/{ids[0]}/file"))
    sr = pydicom.dcmread(sr_path)
    assert sr.VerificationFlag == "VERIFIED" and sr.PreliminaryFlag == "FINAL"
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Li^Wei"
    assert "PredecessorDocumentsSequence" in sr
    polylines = [  # each finding's box (TID 1410 "Image Region"), once
        i
        for i in _walk(sr)
        if i.ValueType == "SCOORD" and i.ConceptNameCodeSequence[0].CodeValue == "111030"
    ]
    assert len(polylines) == len(kept)

    # The F ORU reached the RIS, with the radiologist's words.
    oru = read_oru((pipeline.sink.out_dir / f"{hl7_delivery.message_id}.hl7").read_text("utf-8"))
    assert oru.result_status == "F"
    assert edited_sentence in oru.lines("en")
    with pipeline.session() as session:
        assert session.scalar(select(Report.status).where(Report.version == 1)) == "draft"


def _has(css_class: str):  # type: ignore[no-untyped-def]
    import re

    return re.compile(rf"(^|\s){re.escape(css_class)}(\s|$)")


def _walk(dataset):  # type: ignore[no-untyped-def]
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from _walk(item)
