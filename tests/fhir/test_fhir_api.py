"""The FHIR read endpoint on a real database: a drafted study's report as a DiagnosticReport that
fhir.resources accepts, whose status follows the report (preliminary → final → corrected)."""

from __future__ import annotations

import base64

from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from sqlalchemy.orm import Session

from shared.db.models import Study
from shared.fhir.codes import REPORT_IDENTIFIER_SYSTEM
from tests.web.factories import DraftedStudy
from tests.web.test_api import _edit

FHIR_JSON = "application/fhir+json"


def _read(client: TestClient, uid: str) -> dict:
    response = client.get(f"/fhir/r4/DiagnosticReport/{uid}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    DiagnosticReport.model_validate_json(response.content)  # valid R4(B) as served
    return response.json()


def _sign(client: TestClient, study_id: int, version: int) -> dict:
    response = client.post(
        f"/api/v1/studies/{study_id}/report/sign", json={"base_version": version, "confirm": True}
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_a_draft_reads_as_a_preliminary_report_with_an_observation_per_finding(
    rad_client: TestClient, drafted: DraftedStudy
) -> None:
    report = _read(rad_client, drafted.study_instance_uid)
    assert report["status"] == "preliminary"
    assert report["id"] == drafted.study_instance_uid
    assert {"system": REPORT_IDENTIFIER_SYSTEM, "value": drafted.study_instance_uid} in report[
        "identifier"
    ]
    assert report["imagingStudy"][0]["identifier"]["value"] == (
        f"urn:oid:{drafted.study_instance_uid}"
    )
    observations = [c for c in report["contained"] if c["resourceType"] == "Observation"]
    assert [r["reference"] for r in report["result"]] == [f"#{o['id']}" for o in observations]
    assert len(observations) == 3  # the factory's draft: one finding, two normal regions
    abnormal = [o for o in observations if o["interpretation"][0]["coding"][0]["code"] != "N"]
    assert len(abnormal) == 1
    finding = abnormal[0]
    assert finding["status"] == "preliminary"
    assert finding["valueCodeableConcept"]["coding"][0]["system"] == "http://snomed.info/sct"
    certainty = [c for c in finding["component"] if c["code"]["coding"][0]["code"] == "111012"]
    assert certainty[0]["valueQuantity"]["value"] == 91.0
    region = finding["extension"][0]["extension"]
    by_name: dict[str, list] = {}
    for part in region:
        by_name.setdefault(part["url"], []).append(next(v for k, v in part.items() if k != "url"))
    assert by_name["instance.uid"] == [
        drafted.sop_instance_uids[len(drafted.sop_instance_uids) // 2]
    ]
    assert by_name["instance.sopClass"][0]["code"].startswith("urn:oid:1.2.840.10008.5.1.4.1.1")
    assert len(by_name["instance.imageRegion2D.coordinate"]) == 10  # closed 5-point polyline
    # Both languages: the narrative, one presented form each, the impression's translation.
    assert 'lang="zh-CN"' in report["text"]["div"] and 'lang="en-US"' in report["text"]["div"]
    forms = {f["language"]: base64.b64decode(f["data"]).decode() for f in report["presentedForm"]}
    assert set(forms) == {"en-US", "zh-CN"}
    assert "影像结论" in forms["zh-CN"] and "Impression" in forms["en-US"]
    translation = report["_conclusion"]["extension"][0]["extension"]
    assert {"url": "lang", "valueCode": "zh-CN"} in translation


def test_status_follows_sign_off_and_correction_and_an_unsigned_amendment_stays_hidden(
    rad_client: TestClient, drafted: DraftedStudy
) -> None:
    uid, sid = drafted.study_instance_uid, drafted.study_id
    _edit(rad_client, sid, 1, {"op": "review", "ordinal": 1, "review": "rejected"})
    edited = _read(rad_client, uid)
    assert edited["status"] == "preliminary" and len(edited["result"]) == 2  # rejected: gone
    _sign(rad_client, sid, 2)
    final = _read(rad_client, uid)
    assert final["status"] == "final"
    assert {o["status"] for o in final["contained"] if "status" in o} == {"final"}
    assert final["resultsInterpreter"][0]["display"] == "Li Wei"
    _edit(
        rad_client, sid, 3, {"op": "edit_sentence", "index": 0, "en": "Amended.", "zh": "已修改。"}
    )
    # The amendment is not the report until it is signed: the EHR still reads the final one.
    pending = _read(rad_client, uid)
    assert pending["status"] == "final" and pending["meta"]["tag"][0]["code"] == "3"
    _sign(rad_client, sid, 4)
    corrected = _read(rad_client, uid)
    assert corrected["status"] == "corrected" and corrected["meta"]["tag"][0]["code"] == "5"
    assert "Amended." in corrected["text"]["div"]


def test_search_by_identifier_and_by_the_orders_accession(
    rad_client: TestClient, drafted: DraftedStudy, db_session: Session
) -> None:
    study = db_session.get(Study, drafted.study_id)
    assert study is not None and study.accession_number
    for query in (
        {"identifier": f"{REPORT_IDENTIFIER_SYSTEM}|{drafted.study_instance_uid}"},
        {"identifier": study.accession_number},
        {"based-on:identifier": study.accession_number},
    ):
        response = rad_client.get("/fhir/r4/DiagnosticReport", params=query)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith(FHIR_JSON)
        bundle = Bundle.model_validate_json(response.content)
        assert bundle.type == "searchset" and bundle.total == 1, query
        assert bundle.entry[0].resource.id == drafted.study_instance_uid
    none = rad_client.get("/fhir/r4/DiagnosticReport", params={"identifier": "no-such-acc"})
    assert none.status_code == 200 and none.json()["total"] == 0
    bad = rad_client.get("/fhir/r4/DiagnosticReport")
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"


def test_unknown_report_is_a_404_outcome_and_signed_out_is_a_401_outcome(
    client: TestClient, rad_client: TestClient, drafted: DraftedStudy
) -> None:
    missing = rad_client.get("/fhir/r4/DiagnosticReport/1.2.3.4")
    assert missing.status_code == 404
    assert missing.json()["issue"][0]["code"] == "not-found"
    rad_client.cookies.clear()
    signed_out = rad_client.get(
        f"/fhir/r4/DiagnosticReport/{drafted.study_instance_uid}", follow_redirects=False
    )
    assert signed_out.status_code == 401
    assert signed_out.headers["content-type"].startswith(FHIR_JSON)
    assert signed_out.json()["issue"][0]["code"] == "login"


def test_the_capability_statement_needs_no_sign_in(client: TestClient) -> None:
    response = client.get("/fhir/r4/metadata")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(FHIR_JSON)
    statement = CapabilityStatement.model_validate_json(response.content)
    assert statement.rest[0].resource[0].type == "DiagnosticReport"
