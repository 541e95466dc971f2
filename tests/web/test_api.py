"""The JSON API against a real, migrated PostgreSQL: worklist, detail, render, edit, sign, admin."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.web.worklist_query import STATUSES
from shared.db.models import (
    AuditEvent,
    Delivery,
    DeliveryState,
    DraftJob,
    DraftJobState,
    Report,
    Study,
    StudyState,
    User,
)
from shared.hl7.errors import RisUnreachable
from shared.reports import deliveries, lifecycle
from tests.reports.world import model_result
from tests.web.factories import DraftedStudy, make_drafted_study


def _edit(client: TestClient, study_id: int, version: int, *ops: dict) -> dict:
    response = client.post(
        f"/api/v1/studies/{study_id}/report/edits",
        json={"base_version": version, "operations": list(ops)},
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_worklist_orders_critical_first_then_newest_and_filters(
    rad_client: TestClient, db_session: Session, web_env: Path, tmp_path: Path
) -> None:
    work = tmp_path / "ph"
    old = make_drafted_study(db_session, web_env, work, seed=1, received_minutes_ago=60)
    new = make_drafted_study(db_session, web_env, work, seed=2, received_minutes_ago=5)
    urgent = make_drafted_study(
        db_session, web_env, work, seed=3, critical=True, received_minutes_ago=120,
        patient_name="Wang^Fang=王^芳",
    )  # fmt: skip
    ct = make_drafted_study(db_session, web_env, work, domain="chest_ct", seed=4)
    data = rad_client.get("/api/v1/worklist").json()
    assert data["total"] == 4
    ids = [item["id"] for item in data["items"]]
    assert ids[0] == urgent.study_id
    assert ids.index(new.study_id) < ids.index(old.study_id)
    first = data["items"][0]
    assert (
        first["critical"] and first["status"] == "draft_ready" and first["delivery"] == "delivered"
    )
    assert first["modalities"] == ["DX"] and first["domain"] == "cxr"

    def ids_for(query: str) -> set[int]:
        response = rad_client.get("/api/v1/worklist?" + query)
        assert response.status_code == 200, response.text
        return {item["id"] for item in response.json()["items"]}

    assert ids_for("q=wang%20fang") == {urgent.study_id}  # DICOM '^' matches a space
    assert ids_for("q=王") == {urgent.study_id}
    assert ids_for("modality=CT") == {ct.study_id}
    assert ids_for("domain=chest_ct") == {ct.study_id}
    accession = db_session.get(Study, old.study_id).accession_number  # type: ignore[union-attr]
    assert ids_for(f"q={accession}") == {old.study_id}
    assert ids_for("status=signed") == set()
    page = rad_client.get("/api/v1/worklist?page=2&page_size=3").json()
    assert page["total"] == 4 and len(page["items"]) == 1
    for bad in (
        "status=nonsense",
        "page=0",
        "page_size=1000",
        "modality=ct;drop",
        "q=" + "x" * 200,
    ):
        assert rad_client.get("/api/v1/worklist?" + bad).status_code == 422, bad


def test_each_status_filter_returns_exactly_the_rows_showing_that_status(
    rad_client: TestClient, db_session: Session, web_env: Path, tmp_path: Path
) -> None:
    """draft ready / in review / signed follow the current version as the row shows it: an
    edited draft is in review, not draft ready; a signed study being amended is in review."""
    work = tmp_path / "ph"
    ready, editing, signed, amending = (
        make_drafted_study(db_session, web_env, work, seed=seed).study_id for seed in (1, 2, 3, 4)
    )
    edit = {"op": "edit_sentence", "index": 0, "en": "Reviewed.", "zh": "已审阅。"}
    assert _edit(rad_client, editing, 1, edit)["study"]["status"] == "in_review"
    for sid in (signed, amending):
        sign = rad_client.post(
            f"/api/v1/studies/{sid}/report/sign", json={"base_version": 1, "confirm": True}
        )
        assert sign.status_code == 200, sign.text
    assert _edit(rad_client, amending, 2, edit)["study"]["status"] == "in_review"
    shown = {i["id"]: i["status"] for i in rad_client.get("/api/v1/worklist").json()["items"]}
    assert shown == {
        ready: "draft_ready",
        editing: "in_review",
        signed: "signed",
        amending: "in_review",
    }
    for status in STATUSES:
        response = rad_client.get(f"/api/v1/worklist?status={status}")
        assert response.status_code == 200, response.text
        ids = {item["id"] for item in response.json()["items"]}
        assert ids == {sid for sid, s in shown.items() if s == status}, status
        assert response.json()["total"] == len(ids)


def test_delivery_failed_is_a_status_and_an_admin_can_retry_it(
    rad_client: TestClient, admin_client: TestClient, drafted: DraftedStudy, db_session: Session
) -> None:
    sent = db_session.scalar(select(Delivery).where(Delivery.kind == "hl7"))
    assert sent is not None
    # An ORU for a second RIS that refuses connections, through the real claim/record path.
    delivery = Delivery(
        report_id=sent.report_id, study_id=sent.study_id, report_version=sent.report_version,
        result_status=sent.result_status, kind="hl7", destination="127.0.0.1:9",
        message_id=sent.message_id, state=DeliveryState.PENDING, attempts=9,
    )  # fmt: skip
    db_session.add(delivery)
    db_session.commit()
    now = datetime.now(UTC)
    assert deliveries.claim(db_session, delivery.id, now) == "claimed"
    deliveries.record_outcome(
        db_session, delivery.id, now, error=RisUnreachable("connection refused")
    )
    db_session.commit()
    assert delivery.state == DeliveryState.FAILED and delivery.error_class == "transient"
    (item,) = rad_client.get("/api/v1/worklist?status=delivery_failed").json()["items"]
    assert item["status"] == "delivery_failed" and item["delivery"] == "failed"
    assert rad_client.post(f"/api/v1/admin/deliveries/{delivery.id}/retry").status_code == 403
    retried = admin_client.post(f"/api/v1/admin/deliveries/{delivery.id}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["state"] == "pending" and retried.json()["attempts"] == 0
    again = admin_client.post(f"/api/v1/admin/deliveries/{delivery.id}/retry")
    assert again.status_code == 409
    assert admin_client.post("/api/v1/admin/deliveries/999999/retry").status_code == 404
    audit = admin_client.get("/api/v1/admin/audit?action=delivery_retry").json()
    assert audit["total"] == 1 and audit["items"][0]["details"]["previous_attempts"] == 10


def test_an_admin_can_queue_a_failed_draft_again(
    rad_client: TestClient, admin_client: TestClient, drafted: DraftedStudy, db_session: Session
) -> None:
    job = db_session.scalar(select(DraftJob).where(DraftJob.study_id == drafted.study_id))
    assert job is not None
    job.state, job.attempts = DraftJobState.FAILED, 6
    job.reason = "model server unavailable after 6 attempts: unreachable"
    study = db_session.get(Study, drafted.study_id)
    assert study is not None
    study.state = StudyState.FAILED
    db_session.commit()
    detail = admin_client.get(f"/api/v1/studies/{drafted.study_id}").json()
    assert detail["job"]["state"] == "failed" and detail["job"]["id"] == job.id
    url = f"/api/v1/admin/draft-jobs/{job.id}/retry"
    assert rad_client.post(url).status_code == 403
    retried = admin_client.post(url)
    assert retried.status_code == 200, retried.text
    assert retried.json()["state"] == "pending" and retried.json()["reason"] is None
    db_session.expire_all()
    assert db_session.get(Study, drafted.study_id).state == StudyState.STABLE  # type: ignore[union-attr]
    assert admin_client.post(url).status_code == 409
    assert admin_client.post("/api/v1/admin/draft-jobs/999999/retry").status_code == 404
    audit = admin_client.get("/api/v1/admin/audit?action=draft_retry").json()
    assert audit["total"] == 1 and audit["items"][0]["details"]["attempts"] == 6


def test_study_detail_has_the_grounded_report_images_and_deliveries_and_is_audited(
    rad_client: TestClient, drafted: DraftedStudy, db_session: Session, radiologist: User
) -> None:
    response = rad_client.get(f"/api/v1/studies/{drafted.study_id}")
    assert response.status_code == 200
    detail = response.json()
    report = detail["report"]
    assert report["version"] == 1 and report["status"] == "draft" and not report["final"]
    assert report["author"] is None  # the model
    assert [f["ordinal"] for f in report["findings"]] == [0, 1, 2]
    lesion = report["findings"][0]
    assert lesion["finding_code"] and lesion["box"]["x2"] > lesion["box"]["x1"]
    assert lesion["sop_instance_uid"] in drafted.sop_instance_uids
    assert report["sentences"][0]["finding_ordinals"] == [0]
    assert report["sentences"][0]["zh"]
    (series,) = detail["series"]
    assert [i["sop_instance_uid"] for i in series["images"]] == drafted.sop_instance_uids
    assert {d["kind"] for d in detail["deliveries"]} == {"sr", "gsps", "kos", "hl7"}
    assert detail["permissions"] == {"edit": True, "sign": True, "retry": False}
    events = db_session.scalars(select(AuditEvent).where(AuditEvent.action == "view")).all()
    assert len(events) == 1 and events[0].user_id == radiologist.id
    assert events[0].study_id == drafted.study_id
    assert rad_client.get("/api/v1/studies/99999").status_code == 404
    assert rad_client.get("/api/v1/studies/abc").status_code == 422
    status = rad_client.get(f"/api/v1/studies/{drafted.study_id}/status").json()
    assert status == {
        "state": "drafted", "status": "draft_ready", "report_version": 1,
        "deliveries": detail["deliveries"],
    }  # fmt: skip


def test_render_returns_a_cacheable_png_with_its_scale(
    rad_client: TestClient, drafted: DraftedStudy
) -> None:
    uid = drafted.sop_instance_uids[0]
    response = rad_client.get(f"/api/v1/images/{uid}/frames/1?max_side=128")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.mode == "L" and max(image.size) <= 128
    assert int(response.headers["X-Image-Scale"]) == 2
    assert int(response.headers["X-Source-Rows"]) == drafted.rows
    assert "private" in response.headers["cache-control"]
    etag = response.headers["etag"]
    again = rad_client.get(
        f"/api/v1/images/{uid}/frames/1?max_side=128", headers={"If-None-Match": etag}
    )
    assert again.status_code == 304
    auto = rad_client.get(f"/api/v1/images/{uid}/frames/1?preset=auto")
    assert auto.status_code == 200 and auto.headers["etag"] != etag
    assert rad_client.get(f"/api/v1/images/{uid}/frames/2").status_code == 404
    assert rad_client.get("/api/v1/images/1.2.3.4/frames/1").status_code == 404
    assert rad_client.get(f"/api/v1/images/{uid}/frames/1?preset=../../etc").status_code == 422
    assert rad_client.get("/api/v1/images/..%2F..%2Fetc/frames/1").status_code in (404, 422)


def test_ct_presets_window_in_hounsfield_units(
    rad_client: TestClient, db_session: Session, web_env: Path, tmp_path: Path
) -> None:
    ct = make_drafted_study(db_session, web_env, tmp_path / "ph", domain="chest_ct", seed=7)
    detail = rad_client.get(f"/api/v1/studies/{ct.study_id}").json()
    assert {"lung", "mediastinum", "bone"} <= {p["code"] for p in detail["presets"]}
    assert len(detail["series"][0]["images"]) == 3  # slices to scroll
    uid = ct.sop_instance_uids[1]
    lung = rad_client.get(f"/api/v1/images/{uid}/frames/1?preset=lung")
    bone = rad_client.get(f"/api/v1/images/{uid}/frames/1?preset=bone")
    assert lung.headers["X-Window"] == "-600/1500" and bone.headers["X-Window"] == "400/1800"
    assert lung.content != bone.content
    custom = rad_client.get(f"/api/v1/images/{uid}/frames/1?wc=40&ww=400")
    assert custom.headers["X-Window"] == "40/400"


def test_each_edit_is_a_new_version_with_its_author(
    rad_client: TestClient, drafted: DraftedStudy, db_session: Session, radiologist: User
) -> None:
    sid = drafted.study_id
    v2 = _edit(rad_client, sid, 1, {"op": "review", "ordinal": 0, "review": "rejected"})["report"]
    assert v2["version"] == 2 and v2["status"] == "edited"
    assert v2["author"]["username"] == "li.wei"
    assert v2["findings"][0]["review"] == "rejected"
    # The rejected finding's sentences are excluded from the texts (kept to allow undo).
    excluded = [s for s in v2["sentences"] if s["excluded"]]
    assert {tuple(s["finding_ordinals"]) for s in excluded} == {(0,)}
    assert excluded[0]["en"] not in v2["findings_en"] and v2["impression_en"] == ""
    v3 = _edit(rad_client, sid, 2, {"op": "review", "ordinal": 0, "review": "proposed"})["report"]
    assert not any(s["excluded"] for s in v3["sentences"]) and v3["impression_en"]

    box = {"x1": 10, "y1": 12, "x2": 60, "y2": 70}
    v4 = _edit(rad_client, sid, 3, {"op": "adjust_box", "ordinal": 1, "box": box})["report"]
    assert v4["findings"][1]["box"] == box and v4["findings"][1]["review"] == "adjusted"

    v5 = _edit(rad_client, sid, 4, {"op": "edit_sentence", "index": 1, "en": "Edited by hand."})
    sentence = v5["report"]["sentences"][1]
    assert sentence["en"] == "Edited by hand." and sentence["stale"] == "zh"
    assert "Edited by hand." in v5["report"]["findings_en"]
    v6 = _edit(
        rad_client, sid, 5,
        {"op": "add_sentence", "section": "impression", "en": "Follow-up CT in 3 months.", "zh": "3个月后复查CT。"},
        {"op": "delete_sentence", "index": 2},
    )["report"]  # fmt: skip
    assert v6["impression_en"].endswith("Follow-up CT in 3 months.")
    assert len(v6["sentences"]) == 4

    # Relabel the normal region 1 as abnormal: names, sentence and criticality follow.
    from shared.vocab import load_vocab

    region = v6["findings"][1]["region_code"]
    pneumothorax = load_vocab().finding("pneumothorax")
    assert region in pneumothorax.regions
    v7 = _edit(
        rad_client, sid, 6,
        {"op": "relabel", "ordinal": 1, "region_code": region, "finding_code": "pneumothorax"},
    )["report"]  # fmt: skip
    relabelled = v7["findings"][1]
    assert relabelled["finding_code"] == "pneumothorax" and relabelled["critical"]
    assert (
        relabelled["review"] == "adjusted"
        and relabelled["sentence_en"] != v6["findings"][1]["sentence_en"]
    )
    assert relabelled["sentence_en"] in v7["findings_en"]
    versions = db_session.scalars(select(Report).where(Report.study_id == sid)).all()
    assert sorted(r.version for r in versions)[0] == 1
    original = next(r for r in versions if r.version == 1)
    assert original.status == "draft" and original.author_user_id is None  # history kept
    assert all(r.author_user_id == radiologist.id for r in versions if r.version > 1)


def test_bad_edits_get_a_reason_and_change_nothing(
    rad_client: TestClient, drafted: DraftedStudy, db_session: Session
) -> None:
    url = f"/api/v1/studies/{drafted.study_id}/report/edits"

    def post(body: object) -> tuple[int, str]:
        response = rad_client.post(url, json=body)
        return response.status_code, json.dumps(response.json())

    review = {"op": "review", "ordinal": 0, "review": "accepted"}
    assert post({"base_version": 7, "operations": [review]})[0] == 409
    code, text = post({"base_version": 1, "operations": [{**review, "ordinal": 42}]})
    assert code == 422 and "no finding 42" in text
    code, text = post({"base_version": 1, "operations": [{"op": "explode"}]})
    assert code == 422
    code, text = post({"base_version": 1, "operations": [{**review, "review": "maybe"}]})
    assert code == 422
    big_box = {"op": "adjust_box", "ordinal": 0, "box": {"x1": 0, "y1": 0, "x2": 5000, "y2": 10}}
    code, text = post({"base_version": 1, "operations": [big_box]})
    assert code == 422 and "outside" in text
    inverted = {"op": "adjust_box", "ordinal": 0, "box": {"x1": 50, "y1": 0, "x2": 10, "y2": 10}}
    assert post({"base_version": 1, "operations": [inverted]})[0] == 422
    code, text = post(
        {
            "base_version": 1,
            "operations": [
                {"op": "relabel", "ordinal": 0, "region_code": "nowhere", "finding_code": None}
            ],
        }
    )
    assert code == 422 and "unknown region" in text
    assert post({"base_version": 1, "operations": []})[0] == 422
    assert post({"base_version": 1, "operations": [review], "extra": 1})[0] == 422
    assert post([1, 2, 3])[0] == 422
    bad_json = rad_client.post(
        url, content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert bad_json.status_code == 422
    # A valid op next to an invalid one: all or nothing.
    assert post({"base_version": 1, "operations": [review, {**review, "ordinal": 9}]})[0] == 422
    assert (
        db_session.scalars(select(Report).where(Report.study_id == drafted.study_id))
        .all()[-1]
        .version
        == 1
    )


def test_sign_makes_a_final_version_with_deliveries_then_a_correction(
    rad_client: TestClient, drafted: DraftedStudy, db_session: Session, radiologist: User
) -> None:
    sid = drafted.study_id
    url = f"/api/v1/studies/{sid}/report/sign"
    _edit(rad_client, sid, 1, {"op": "review", "ordinal": 1, "review": "rejected"})
    assert rad_client.post(url, json={"base_version": 2, "confirm": False}).status_code == 422
    assert rad_client.post(url, json={"base_version": 1, "confirm": True}).status_code == 409
    signed = rad_client.post(url, json={"base_version": 2, "confirm": True})
    assert signed.status_code == 200, signed.text
    detail = signed.json()
    report = detail["report"]
    assert report["status"] == "signed" and report["final"] and report["version"] == 3
    assert report["signed_by"]["username"] == "li.wei" and report["signed_at"]
    # The rejected finding is gone, the rest renumbered; proposed ones signed as accepted.
    assert [f["ordinal"] for f in report["findings"]] == [0, 1]
    assert {f["review"] for f in report["findings"]} == {"accepted"}
    assert all(o in (0, 1) for s in report["sentences"] for o in s["finding_ordinals"])
    assert detail["study"]["state"] == "signed" and detail["permissions"]["sign"] is False
    new = [d for d in detail["deliveries"] if d["report_version"] == 3]
    # the PACS gets the SR, the boxes (GSPS) and the key images (KOS); the RIS the ORU
    assert {(d["kind"], d["state"]) for d in new} == {
        (kind, "pending") for kind in ("sr", "gsps", "kos", "hl7")
    }
    assert rad_client.post(url, json={"base_version": 3, "confirm": True}).status_code == 409
    study = db_session.get(Study, sid)
    db_session.refresh(study)
    assert study is not None and study.state == StudyState.SIGNED
    sign_events = db_session.scalars(select(AuditEvent).where(AuditEvent.action == "sign")).all()
    assert len(sign_events) == 1 and sign_events[0].details == {"version": 3, "status": "signed"}

    # Editing a signed report: an amendment, then a corrected version goes out again.
    amended = _edit(
        rad_client,
        sid,
        3,
        {"op": "edit_sentence", "index": 0, "en": "Corrected.", "zh": "已更正。"},
    )
    assert amended["report"]["status"] == "edited" and amended["study"]["state"] == "signed"
    assert amended["study"]["status"] == "in_review"
    corrected = rad_client.post(url, json={"base_version": 4, "confirm": True}).json()
    assert corrected["report"]["status"] == "corrected" and corrected["report"]["version"] == 5
    assert len([d for d in corrected["deliveries"] if d["report_version"] == 5]) == 4

    # Feedback export: what was done to each AI finding, no patient identifiers.
    from shared.db.models import UserRole
    from tests.web.conftest import sign_in
    from tests.web.factories import make_user

    make_user(db_session, "exporter", UserRole.ADMIN)
    rad_client.cookies.clear()
    admin = sign_in(rad_client, "exporter")
    export = admin.get("/api/v1/admin/feedback.jsonl")
    assert export.status_code == 200 and export.headers["content-type"].startswith(
        "application/x-ndjson"
    )
    lines = [json.loads(line) for line in export.text.splitlines()]
    first_signature = [x for x in lines if x["report_version"] == 3]
    assert sorted(x["review"] for x in first_signature) == ["accepted", "accepted", "rejected"]
    assert all(x["proposed"] and x["proposed"]["box"] for x in first_signature)
    assert "patient" not in export.text.lower()


def test_admin_lists_audit_and_manages_users(admin_client: TestClient, db_session: Session) -> None:
    created = admin_client.post(
        "/api/v1/admin/users",
        json={"username": "zhang.min", "full_name": "Zhang Min", "dicom_person_name": "Zhang^Min",
              "role": "radiologist", "password": "a-long-password-1"},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    duplicate = admin_client.post(
        "/api/v1/admin/users",
        json={"username": "zhang.min", "full_name": "Z", "role": "radiologist", "password": "another-password"},
    )  # fmt: skip
    assert duplicate.status_code == 409
    weak = admin_client.post(
        "/api/v1/admin/users",
        json={"username": "weak", "full_name": "W", "role": "radiologist", "password": "short"},
    )
    assert weak.status_code == 422
    users = admin_client.get("/api/v1/admin/users").json()
    assert {u["username"] for u in users} == {"pacs.admin", "zhang.min"}
    off = admin_client.post(f"/api/v1/admin/users/{created.json()['id']}/active?active=false")
    assert off.status_code == 200 and off.json()["active"] is False
    audit = admin_client.get("/api/v1/admin/audit").json()
    actions = [e["action"] for e in audit["items"]]
    assert actions[:3] == ["user_active", "user_create", "login"]
    page = admin_client.get("/admin/audit")
    assert page.status_code == 200 and "user_create" in page.text
    assert admin_client.get("/admin/users").status_code == 200


def test_metrics_in_prometheus_text_format(client: TestClient, drafted: DraftedStudy) -> None:
    client.get("/healthz")
    body = client.get("/metrics").text
    assert 'medrega_studies{state="drafted"} 1.0' in body
    assert 'medrega_deliveries{kind="sr",state="delivered"} 1.0' in body
    assert "# TYPE medrega_draft_latency_seconds summary" in body
    assert "medrega_draft_latency_seconds_count 1.0" in body
    assert 'medrega_web_requests_total{method="GET",route="/healthz",status="200"}' in body
    assert "medrega_broker_up" in body
    for line in body.splitlines():
        assert line.startswith("#") or " " in line, line


def test_a_redraft_landing_after_sign_off_shows_as_new_images_not_as_a_draft(
    rad_client: TestClient, drafted: DraftedStudy, db_session: Session
) -> None:
    """The worker finishes a re-draft (late images) after the radiologist signed: the worklist
    keeps 'signed' and shows the badge; the study page says so; no draft version appears."""
    sid = drafted.study_id
    signed = rad_client.post(
        f"/api/v1/studies/{sid}/report/sign", json={"base_version": 1, "confirm": True}
    )
    assert signed.status_code == 200, signed.text
    job = DraftJob(study_id=sid, instance_set_sha256="f" * 64, instance_count=4, state="running")
    db_session.add(job)
    db_session.flush()
    assert lifecycle.store_draft(db_session, job, model_result()) is None
    db_session.commit()
    (item,) = rad_client.get("/api/v1/worklist").json()["items"]
    assert item["status"] == "signed" and item["new_images_after_signoff"] is True
    detail = rad_client.get(f"/api/v1/studies/{sid}").json()
    assert detail["study"]["new_images_after_signoff"] is True
    assert [v["status"] for v in detail["versions"]] == ["signed", "draft"]
    page = rad_client.get("/worklist")
    assert "New images after sign-off" in page.text
    # Signing an amendment does not say the images were looked at; acknowledging does (audited).
    ack = f"/api/v1/studies/{sid}/new-images/acknowledge"
    assert rad_client.post(ack).json()["study"]["new_images_after_signoff"] is False
    assert rad_client.post(ack).status_code == 409
    assert db_session.scalar(
        select(AuditEvent).where(AuditEvent.action == "acknowledge_new_images")
    )
