"""Injection, oversized and malformed input, response headers."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.web.web_settings import MAX_BODY_BYTES
from shared.db.models import Study
from tests.web.factories import DraftedStudy

SCRIPT = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_sql_in_search_is_only_text(
    rad_client: TestClient, drafted: DraftedStudy, db_session: Session
) -> None:
    for q in ("'; DROP TABLE studies; --", "' OR '1'='1", "%", "_", "\\", "Lin%' --"):
        response = rad_client.get("/api/v1/worklist", params={"q": q})
        assert response.status_code == 200, q
        assert response.json()["total"] == 0, q  # wildcards and quotes match literally
    assert db_session.scalar(select(func.count()).select_from(Study)) == 1


def test_html_in_report_text_and_patient_data_is_escaped(
    rad_client: TestClient, drafted: DraftedStudy, db_session: Session
) -> None:
    study = db_session.get(Study, drafted.study_id)
    assert study is not None
    study.patient_name = "<b>Evil</b>^Name"
    db_session.commit()
    edit = rad_client.post(
        f"/api/v1/studies/{drafted.study_id}/report/edits",
        json={"base_version": 1, "operations": [{"op": "edit_sentence", "index": 0, "en": SCRIPT}]},
    )
    assert edit.status_code == 200
    assert edit.json()["report"]["sentences"][0]["en"] == SCRIPT  # stored as typed, it's text
    page = rad_client.get(f"/studies/{drafted.study_id}")
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "<img src=x" not in page.text
    assert "<b>Evil</b>" not in page.text and "&lt;b&gt;Evil&lt;/b&gt;" in page.text
    assert "\\u003cscript\\u003e" in page.text  # inside the JSON island, HTML-escaped
    worklist = rad_client.get("/worklist")
    assert "<b>Evil</b>" not in worklist.text and "&lt;b&gt;Evil" in worklist.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"


def test_oversized_bodies_are_refused_before_reading(
    rad_client: TestClient, drafted: DraftedStudy
) -> None:
    url = f"/api/v1/studies/{drafted.study_id}/report/edits"
    big = b'{"base_version": 1, "operations": [], "pad": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}'
    response = rad_client.post(url, content=big, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        yield b'{"base_version": 1, "pad": "'
        for _ in range(MAX_BODY_BYTES // 4096 + 2):
            yield b"y" * 4096
        yield b'"}'

    chunked = rad_client.post(url, content=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413
    login = rad_client.post("/login", content=b"a" * (MAX_BODY_BYTES + 1),
                            headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert login.status_code == 413


def test_malformed_payloads_get_a_reason_without_echoing_the_input(
    rad_client: TestClient, drafted: DraftedStudy
) -> None:
    url = f"/api/v1/studies/{drafted.study_id}/report/edits"
    secret = "Patient-Name-Should-Not-Echo"
    response = rad_client.post(url, json={"base_version": secret, "operations": [{"op": "review"}]})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert any(e["loc"][-1] == "base_version" for e in detail)
    assert secret not in response.text
    too_long = rad_client.post(
        url,
        json={
            "base_version": 1,
            "operations": [{"op": "edit_sentence", "index": 0, "en": "x" * 2001}],
        },
    )
    assert too_long.status_code == 422
    nan_box = rad_client.post(
        f"/api/v1/studies/{drafted.study_id}/identify",
        content=b'{"sop_instance_uid": "1.2", "box": {"x1": NaN, "y1": 0, "x2": 1, "y2": 1}}',
        headers={"Content-Type": "application/json"},
    )
    assert nan_box.status_code == 422
    wrong_type = rad_client.post(
        url, content=b"<xml/>", headers={"Content-Type": "application/xml"}
    )
    assert wrong_type.status_code == 422
