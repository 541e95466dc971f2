"""The ORU^R01 builder: hl7apy strict validation, and every field the RIS relies on."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import ValidationError
from hl7apy.parser import parse_message

from shared.hl7.er7 import read_er7
from shared.hl7.errors import InvalidOru
from shared.hl7.oru import DRAFT_NOTE, STUDY_UID_AUTHORITY, ReportLine, build_oru
from shared.hl7.oru_header import HierarchicDesignator, OruHeader
from shared.hl7.oru_read import read_oru
from tests.hl7.conftest import CHINESE_PN, SR_UID, STUDY_UID, make_input

NOW = datetime(2026, 11, 28, 5, 0, 1, tzinfo=UTC)


def strict_parse(er7: str) -> Any:
    """hl7apy's STRICT parser plus validate(): what a picky receiver would do."""
    message = parse_message(er7.strip("\r"), validation_level=VALIDATION_LEVEL.STRICT)
    assert message.validate() is True
    return message


@pytest.mark.parametrize("status", ["P", "F", "C"])
@pytest.mark.parametrize("languages", [("en",), ("zh",), ("en", "zh")])
def test_built_message_passes_hl7apy_strict_validation(
    status: str, languages: tuple[str, ...]
) -> None:
    er7 = build_oru(make_input(result_status=status), "ORU42V2", languages=languages)  # type: ignore[arg-type]
    message = strict_parse(er7)
    assert message.name == "ORU_R01"
    assert er7.endswith("\r") and "\n" not in er7


def test_validation_is_not_vacuous() -> None:
    """The same validator rejects our message once a required field (OBX-11) is gone."""
    er7 = build_oru(make_input(), "ORU42V2")
    broken = er7.replace("|||AA|||P\r", "|||AA\r", 1)
    assert broken != er7
    message = parse_message(broken.strip("\r"), validation_level=VALIDATION_LEVEL.TOLERANT)
    with pytest.raises(ValidationError):
        message.validate()


def test_msh_header() -> None:
    er7 = build_oru(
        make_input(),
        "ORU42V2",
        header=OruHeader(
            receiving_application=HierarchicDesignator("RIS_APP"),
            receiving_facility=HierarchicDesignator("HOSP_A"),
            sending_facility=HierarchicDesignator("RAD"),
            processing_id="T",
        ),
        now=NOW,
    )
    msg = read_er7(er7)
    assert msg.field("MSH", 3) == "MEDREGA_PACS"
    assert msg.field("MSH", 4) == "RAD"
    assert msg.field("MSH", 5) == "RIS_APP"
    assert msg.field("MSH", 6) == "HOSP_A"
    assert msg.field("MSH", 7) == "20261128050001+0000"
    assert msg.segment("MSH")[9] == "ORU^R01^ORU_R01"  # type: ignore[index]
    assert msg.field("MSH", 10) == "ORU42V2"
    assert msg.field("MSH", 11) == "T"
    assert msg.field("MSH", 12) == "2.5.1"
    assert msg.field("MSH", 18) == "UNICODE UTF-8"
    assert [s[0] for s in msg.segments][:5] == ["MSH", "PID", "ORC", "OBR", "NTE"]


def test_pid_from_dicom_header_keeps_the_chinese_name() -> None:
    er7 = build_oru(make_input(), "C1")
    pid = read_er7(er7).segment("PID")
    assert pid is not None
    assert pid[3] == "PX0001^^^^MR"
    assert pid[5] == "Wang^Xiaoming^^^^^L^A~王^小明^^^^^L^I"
    assert pid[7] == "19800102"
    assert pid[8] == "M"
    assert read_oru(er7).patient_name_pn == CHINESE_PN


@pytest.mark.parametrize(("dicom_sex", "hl7_sex"), [("F", "F"), ("o", "O"), ("", "U"), (None, "U")])
def test_sex_mapping(dicom_sex: str | None, hl7_sex: str) -> None:
    assert read_oru(build_oru(make_input(patient_sex=dicom_sex), "C1")).sex == hl7_sex


def test_unknown_name_is_sent_as_unspecified() -> None:
    er7 = build_oru(make_input(patient_name_pn=None, patient_birth_date=None), "C1")
    strict_parse(er7)
    pid = read_er7(er7).segment("PID")
    assert pid is not None and pid[5] == "^^^^^^U" and pid[7] == ""


@pytest.mark.parametrize("status", ["P", "F", "C"])
def test_result_status_in_obr25_and_every_obx11(status: str) -> None:
    received = read_oru(build_oru(make_input(result_status=status), "C1"))
    assert received.result_status == status
    assert received.observations and {o.status for o in received.observations} == {status}


def test_signed_report_names_the_interpreter_draft_carries_the_ai_note() -> None:
    final = build_oru(make_input(result_status="F"), "C1")
    obr = read_er7(final).segment("OBR")
    assert obr is not None and obr[32] == "lwei&Li&Wei"
    assert read_er7(final).segment("NTE") is None

    draft = build_oru(make_input(result_status="P"), "C1")
    obr = read_er7(draft).segment("OBR")
    assert obr is not None
    assert len(obr) <= 32 or obr[32] == ""  # drafts have no interpreter
    assert DRAFT_NOTE in read_er7(draft).field("NTE", 3)


def test_order_keyed_by_accession_number() -> None:
    er7 = build_oru(
        make_input(), "C1", header=OruHeader(accession_authority=HierarchicDesignator("HOSP_RIS"))
    )
    msg = read_er7(er7)
    assert msg.segment("ORC")[1:4] == ("RE", "ACC0001^HOSP_RIS", "ACC0001^HOSP_RIS")  # type: ignore[index]
    obr = msg.segment("OBR")
    assert obr is not None
    assert obr[2] == obr[3] == "ACC0001^HOSP_RIS"
    assert obr[4] == "18748-4^Diagnostic imaging study^LN"
    assert obr[7] == "20261128041500"
    assert obr[18] == "ACC0001"
    assert obr[22] == "20261128050000+0000"
    assert obr[25] == "P"


def test_study_without_accession_uses_the_study_uid_as_filler_number() -> None:
    er7 = build_oru(make_input(accession_number=None), "C1")
    strict_parse(er7)
    received = read_oru(er7)
    assert received.placer_order == ""
    assert received.filler_order == STUDY_UID
    assert received.filler_authority == STUDY_UID_AUTHORITY
    orc = read_er7(er7).segment("ORC")
    assert orc is not None and orc[2] == "" and orc[3] == f"{STUDY_UID}^{STUDY_UID_AUTHORITY}"


def test_one_obx_per_line_and_language_with_linked_sub_ids() -> None:
    received = read_oru(build_oru(make_input(), "C1", languages=("en", "zh")))
    text_rows = [o for o in received.observations if o.value_type == "TX"]
    assert [o.sub_id for o in text_rows] == ["1.en", "1.zh", "2.en", "2.zh", "3.en", "3.zh"]
    assert received.lines("zh", "19005-8") == ["右侧气胸。"]
    assert received.lines("en", "18782-3") == [
        "Small right apical pneumothorax, 8 mm.",
        "Heart size is normal.",
    ]
    assert [o.set_id for o in received.observations] == [str(i) for i in range(1, 9)]

    only_zh = read_oru(build_oru(make_input(), "C1", languages=("zh",)))
    assert only_zh.lines("en") == []
    assert len(only_zh.lines("zh")) == 3


def test_sr_reference_observations() -> None:
    received = read_oru(build_oru(make_input(), "C1"))
    study = received.observation("110180")
    sr = received.observation("SR")
    assert study is not None and study.value_type == "ST" and study.value == STUDY_UID
    assert sr is not None and sr.value_type == "RP"
    assert sr.value == f"{SR_UID}^PACS^AP^DICOM"
    without_sr = read_oru(build_oru(make_input(sr_sop_instance_uid=None), "C1"))
    assert without_sr.observation("SR") is None and without_sr.observation("110180") is not None


def test_critical_findings_are_flagged_aa() -> None:
    received = read_oru(build_oru(make_input(), "C1"))
    flags = {o.sub_id: o.abnormal_flag for o in received.observations}
    assert flags["1.en"] == flags["1.zh"] == flags["3.en"] == "AA"
    assert flags["2.en"] == "N"


def test_critical_study_without_a_flagged_line_flags_the_impression() -> None:
    lines = tuple(ReportLine(line.section, line.en, line.zh, None) for line in make_input().lines)
    received = read_oru(build_oru(make_input(lines=lines, critical=True), "C1"))
    flags = {o.sub_id: o.abnormal_flag for o in received.observations}
    assert flags["3.en"] == "AA" and flags["1.en"] == "" and flags["2.en"] == ""


def test_delimiters_in_free_text_are_escaped() -> None:
    nasty = r"A|B^C~D\E&F \F\ literal"
    er7 = build_oru(make_input(lines=(ReportLine("findings", nasty, "王|小^明"),)), "C1")
    strict_parse(er7)
    assert r"A\F\B\S\C\R\D\E\E\T\F \E\F\E\ literal" in er7
    assert read_oru(er7).lines("en") == [nasty]
    assert read_oru(er7).lines("zh") == ["王|小^明"]


def test_sentence_longer_than_hl7apy_st_limit() -> None:
    long_en = "The lungs are clear. " * 40  # ~840 characters: hl7apy's strict parser stops at 199
    er7 = build_oru(make_input(lines=(ReportLine("findings", long_en, "肺清。" * 300),)), "C1")
    received = read_oru(er7)  # tolerant parse + validate()
    assert received.lines("en") == [long_en.strip()]
    assert received.lines("zh") == ["肺清。" * 300]


@pytest.mark.parametrize(
    ("changes", "control_id"),
    [
        ({"patient_id": " "}, "C1"),
        ({}, ""),
        ({}, "X" * 21),
        ({}, "A|B"),
    ],
)
def test_unbuildable_messages_raise_a_permanent_error(
    changes: dict[str, str], control_id: str
) -> None:
    with pytest.raises(InvalidOru) as info:
        build_oru(make_input(**changes), control_id)
    assert info.value.transient is False


def test_bad_options_raise() -> None:
    with pytest.raises(InvalidOru):
        build_oru(make_input(), "C1", header=OruHeader(processing_id="X"))  # type: ignore[arg-type]
    with pytest.raises(InvalidOru):
        build_oru(make_input(), "C1", languages=())
    with pytest.raises(InvalidOru):
        build_oru(make_input(), "C1", languages=("fr",))  # type: ignore[arg-type]
