"""OruInput.from_report on versions mapped from (unsaved) ORM rows, as the delivery worker does —
no database needed."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.db.models import RegionFinding, Report, Study, User
from shared.hl7.errors import InvalidOru
from shared.hl7.oru import OruInput, build_oru, result_status_for
from shared.hl7.oru_read import read_oru
from shared.reports.mapping import report_version


def _study(**changes: object) -> Study:
    values: dict[str, object] = dict(
        id=7,
        study_instance_uid="1.2.3.4.5",
        patient_id="PX9",
        patient_name="Zhang^San=张^三",
        patient_birth_date="19700315",
        patient_sex="F",
        accession_number="A123",
        study_date="20261127",
        study_time="093015.123456",
    )
    values.update(changes)
    return Study(**values)


def _finding(
    ordinal: int, code: str | None, critical: bool = False, review: str = "proposed"
) -> RegionFinding:
    return RegionFinding(
        ordinal=ordinal,
        region_code=f"r{ordinal}",
        region_name_en="region",
        region_name_zh="区域",
        finding_code=code,
        critical=critical,
        review=review,
        sentence_en="",
        sentence_zh="",
    )


def _report(status: str = "draft", **changes: object) -> Report:
    values: dict[str, object] = dict(
        id=11,
        study_id=7,
        version=3,
        status=status,
        model_name="medrega-ref",
        model_version="1.0.0",
        created_at=datetime(2026, 11, 27, 10, 0, tzinfo=UTC),
        sentences=[
            {
                "section": "findings",
                "en": "Left pleural effusion.",
                "zh": "左侧胸腔积液。",
                "finding_ordinals": [0],
            },
            {
                "section": "findings",
                "en": "Pneumothorax on the right.",
                "zh": "右侧气胸。",
                "finding_ordinals": [1],
            },
            {
                "section": "findings",
                "en": "Heart normal.",
                "zh": "心脏正常。",
                "finding_ordinals": [2],
            },
            {"section": "impression", "en": "Effusion.", "zh": "积液。", "finding_ordinals": []},
        ],
        findings_en="",
        findings_zh="",
        impression_en="",
        impression_zh="",
    )
    values.update(changes)
    report = Report(**values)
    report.findings = [
        _finding(0, "effusion"),
        _finding(1, "ptx", critical=True),
        _finding(2, None),
    ]
    return report


def test_from_report_draft() -> None:
    data = OruInput.from_report(report_version(_study(), _report()), sr_sop_instance_uid="1.2.9")
    assert data.result_status == "P"
    assert data.report_id == 11 and data.report_version == 3
    assert data.observation_dtm == "20261127093015"
    assert data.status_changed_at == datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    assert [line.abnormal_flag for line in data.lines] == ["A", "AA", "N", None]
    assert data.critical is True
    assert data.interpreter is None
    assert data.model == "medrega-ref 1.0.0"
    received = read_oru(build_oru(data, "ORU11V3"))
    assert received.patient_name_pn == "Zhang^San=张^三"
    assert received.filler_order == "A123"
    assert received.lines("zh")[1] == "右侧气胸。"


def test_from_report_signed_with_rejected_critical_finding() -> None:
    report = _report("signed", signed_at=datetime(2026, 11, 27, 12, 30, tzinfo=UTC))
    report.findings[1].review = "rejected"  # the radiologist overruled the pneumothorax
    report.signed_by_user_id = 5
    signer = User(
        id=5, username="lwei", full_name="Li Wei", dicom_person_name="Li^Wei", password_hash="x"
    )
    data = OruInput.from_report(
        report_version(_study(accession_number=None, study_date=None), report, signer)
    )
    assert data.result_status == "F"
    assert data.critical is False
    # The sentence grounded only on the rejected finding is excluded from what is sent.
    assert [line.en for line in data.lines] == [
        "Left pleural effusion.",
        "Heart normal.",
        "Effusion.",
    ]
    assert [line.abnormal_flag for line in data.lines] == ["A", "N", None]
    assert data.status_changed_at == datetime(2026, 11, 27, 12, 30, tzinfo=UTC)
    assert data.observation_dtm == "20261127100000+0000"  # no study date: report time
    assert data.interpreter is not None and data.interpreter.name_pn == "Li^Wei"
    received = read_oru(build_oru(data, "ORU11V3"))
    assert received.interpreter == "lwei&Li&Wei"
    assert received.filler_order == "1.2.3.4.5"


def test_from_report_falls_back_to_section_texts() -> None:
    report = _report(
        sentences=[], findings_en="Clear lungs.", findings_zh="双肺清晰。", impression_en="Normal."
    )
    report.findings = []
    data = OruInput.from_report(report_version(_study(), report))
    assert [(line.section, line.en, line.zh) for line in data.lines] == [
        ("findings", "Clear lungs.", "双肺清晰。"),
        ("impression", "Normal.", ""),
    ]
    assert read_oru(build_oru(data, "C")).lines("zh") == ["双肺清晰。"]


@pytest.mark.parametrize(
    ("status", "expected"),
    [("draft", "P"), ("edited", "P"), ("signed", "F"), ("corrected", "C")],
)
def test_result_status_mapping(status: str, expected: str) -> None:
    assert result_status_for(status) == expected


def test_superseded_reports_are_not_sent() -> None:
    with pytest.raises(InvalidOru):
        result_status_for("superseded")


def test_a_patient_with_several_names_and_hl7_delimiters_gets_a_valid_oru() -> None:
    study = _study(patient_name="Doe^John\\O|Brien^Mary~Ann&Co")
    message = build_oru(OruInput.from_report(report_version(study, _report())), "ORU11V3")
    pid = next(seg for seg in message.split("\r") if seg.startswith("PID|"))
    assert pid.split("|")[5] == "Doe^John^^^^^L^A~O\\F\\Brien^Mary\\R\\Ann\\T\\Co^^^^^L^A"
    assert read_oru(message).patient_name_pn.startswith("Doe^John")
