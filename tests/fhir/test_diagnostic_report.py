"""The DiagnosticReport builder on domain objects, and its link to the DICOM SR we send."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom import Dataset
from sqlalchemy.orm import Session

from services.worker.delivery import build_sr, load_version
from shared.fhir.diagnostic_report import FhirBuildError, diagnostic_report_json
from shared.reports.domain import (
    ImageRef,
    PixelBox,
    RegionFindingResult,
    ReportSentence,
    ReportVersion,
    Signer,
    StudyHeader,
)
from tests.web.factories import DraftedStudy

TRACKING_UID = "112040"


def _sr_tracking_uids(items: Dataset | list) -> list[str]:
    found = []
    for item in items if isinstance(items, list) else [items]:
        name = item.get("ConceptNameCodeSequence")
        if name and name[0].CodeValue == TRACKING_UID:
            found.append(str(item.UID))
        found += _sr_tracking_uids(list(item.get("ContentSequence", [])))
    return found


def test_each_abnormal_observation_carries_the_sr_tracking_uid_of_the_same_finding(
    drafted: DraftedStudy, db_session: Session, web_env: Path
) -> None:
    version, study_id = load_version(db_session, drafted.report_id)
    sr = build_sr(db_session, version, study_id)
    report = diagnostic_report_json(version, institution="Test hospital")
    fhir_uids = [
        ident["value"].removeprefix("urn:oid:")
        for site in report["contained"]
        if site["resourceType"] == "BodyStructure"
        for ident in site.get("identifier", [])
        if ident["type"]["coding"][0]["code"] == TRACKING_UID
    ]
    assert len(fhir_uids) == 1  # the factory's one abnormal finding
    assert set(fhir_uids) <= set(_sr_tracking_uids(sr))


def _finding(code: str | None, region: str = "right_lung", **extra: object) -> RegionFindingResult:
    names = {"right_lung": ("right lung", "右肺"), "left_lung": ("left lung", "左肺")}[region]
    return RegionFindingResult(
        region_code=region,
        region_name_en=names[0],
        region_name_zh=names[1],
        finding_code=code,
        finding_name_en="pleural effusion" if code else None,
        finding_name_zh="胸腔积液" if code else None,
        probability=extra.pop("probability", 0.9),  # type: ignore[arg-type]
        image=ImageRef("1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.1.1", 1),
        box=PixelBox(10, 20, 50, 60),
        sentence_en="x",
        sentence_zh="x",
        **extra,  # type: ignore[arg-type]
    )


def _version(findings: list[RegionFindingResult], status: str = "draft") -> ReportVersion:
    signer = Signer("li.wei", "Li^Wei", datetime(2026, 11, 30, 9, 0, tzinfo=UTC))
    return ReportVersion(
        report_id=7,
        version=1,
        status=status,  # type: ignore[arg-type]
        study=StudyHeader(
            "1.2.3.4",
            patient_id="P1",
            patient_name="Wang^Fang=王^芳",
            accession_number="ACC9",
            study_date="20261130",
        ),  # fmt: skip
        domain="cxr",
        model_name="medrega-ref",
        model_version="t",
        created_at=datetime(2026, 11, 30, 8, 0, tzinfo=UTC),
        findings=findings,
        sentences=[
            ReportSentence("findings", "Right pleural effusion.", "右侧胸腔积液。", [0]),
            ReportSentence("impression", "Right pleural effusion.", "右侧胸腔积液。", [0]),
        ],
        signer=signer if status in ("signed", "corrected") else None,
    )


def test_laterality_certainty_and_interpretation_of_a_finding() -> None:
    report = diagnostic_report_json(
        _version([_finding("pleural_effusion", critical=True), _finding(None, "left_lung")]),
        institution="H",
    )
    effusion, normal, effusion_site, normal_site = report["contained"]
    assert effusion["focus"] == [{"reference": "#site-1"}] and effusion_site["id"] == "site-1"
    assert effusion_site["location"]["coding"][0]["code"] == "39607008"  # Lung
    assert effusion_site["locationQualifier"][0]["coding"][0]["code"] == "24028007"  # Right
    assert normal_site["locationQualifier"][0]["coding"][0]["code"] == "7771000"  # Left
    components = {c["code"]["coding"][0]["code"]: c for c in effusion["component"]}
    assert components["111012"]["valueQuantity"] == {
        "value": 90.0, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"
    }  # fmt: skip
    assert effusion["bodySite"]["coding"][0]["code"] == "39607008"  # Lung
    assert effusion["bodySite"]["text"] == "right lung / 右肺"
    assert effusion["interpretation"][0]["coding"][0]["code"] == "AA"  # critical
    assert normal["valueCodeableConcept"]["coding"][0]["code"] == "17621005"
    assert normal["interpretation"][0]["coding"][0]["code"] == "N"
    assert "identifier" in effusion_site
    assert "identifier" not in normal_site  # normal regions have no SR tracking UID of their own
    assert report["subject"]["display"] == "Wang Fang (王 芳)"
    assert report["basedOn"][0]["identifier"]["value"] == "ACC9"
    assert report["effectiveDateTime"] == "2026-11-30"
    assert report["conclusionCode"][0]["text"] == "Right pleural effusion / 右侧胸腔积液"


def test_rejected_findings_are_not_sent_and_one_language_means_one_form() -> None:
    findings = [_finding("pleural_effusion"), _finding(None, "left_lung", review="rejected")]
    report = diagnostic_report_json(_version(findings), languages=("zh",), institution="H")
    assert [c["resourceType"] for c in report["contained"]] == ["Observation", "BodyStructure"]
    assert [f["language"] for f in report["presentedForm"]] == ["zh-CN"]
    assert report["conclusion"] == "右侧胸腔积液。" and "_conclusion" not in report
    assert report["conclusionCode"][0]["text"] == "右侧胸腔积液"  # the vocabulary's label
    assert 'lang="en-US"' not in report["text"]["div"]


def test_status_by_version_and_a_final_without_signer_is_refused() -> None:
    draft = _version([_finding("pleural_effusion")])
    assert diagnostic_report_json(draft, institution="H")["status"] == "preliminary"
    signed = _version([_finding("pleural_effusion")], status="signed")
    final = diagnostic_report_json(signed, institution="H")
    assert final["status"] == "final" and final["issued"] == "2026-11-30T09:00:00Z"
    corrected = diagnostic_report_json(replace(signed, status="corrected"), institution="H")
    assert corrected["status"] == "corrected"
    with pytest.raises(FhirBuildError, match="signer"):
        diagnostic_report_json(replace(signed, signer=None), institution="H")
    with pytest.raises(FhirBuildError, match="language"):
        diagnostic_report_json(draft, languages=(), institution="H")
