"""ORU^R01 v2.5.1 for one report version, written as ER7 and strictly validated with hl7apy.

Message layout (one study, one report version):

    MSH  MSH-3..6 sending/receiving application and facility (OruHeader, configured),
         MSH-10 control ID (see control_id.py), MSH-18 UNICODE UTF-8
    PID  from the DICOM header: ID (PID-3.4: the configured assigning authority), name (one XPN
         per PN group, Chinese survives), birth date, sex
    ORC  RE (observations to follow), placer/filler order number = Accession Number
    OBR  OBR-4 the study's requested procedure code (else the configured default, LOINC 18748-4),
         OBR-7 study date/time, OBR-22 status change, OBR-25 P/F/C,
         OBR-32 the signing radiologist (F/C only)
    NTE  on drafts only: "AI-generated preliminary draft, not verified" (EN + ZH)
    OBX  one TX row per report sentence and language; OBX-3 LOINC 18782-3 (findings) or 19005-8
         (impression); OBX-4 sub-ID `<sentence no>.<lang>` ties translations of one sentence
         together; OBX-8 AA (critical) / A (abnormal) / N (normal region); OBX-11 = OBR-25
    OBX  ST 110180^Study Instance UID^DCM, and RP <SR SOP Instance UID>^PACS^AP^DICOM (sub-ID SR)
    OBX  RP <GSPS SOP Instance UID>^PACS^AP^DICOM per key image (sub-ID GSPS.n) and RP <KOS SOP
         Instance UID>^PACS^AP^DICOM (sub-ID KOS): the version's other objects in the PACS

No Accession Number: ORC-2/OBR-2 stay empty and ORC-3/OBR-3 (filler order number) carry the
Study Instance UID with assigning authority `MEDREGA_SUID`, so a RIS can still match on the study
(it is also in the 110180 OBX) and can never confuse it with a real accession.

Critical findings are flagged per line in OBX-8 (`AA`, HL7 table 0078 "critically abnormal"),
the field HL7 defines for it and the one result viewers colour. OBR-27 (priority) is the order's
requested priority and is deprecated in 2.5.1 (TQ1), so we do not rewrite it in a result.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import HL7apyException, ValidationError
from hl7apy.parser import parse_message

from shared.hl7.errors import InvalidOru
from shared.hl7.escape import escape
from shared.hl7.names import dicom_pn_to_xpn, display_name
from shared.hl7.oru_header import DEFAULT_PROCEDURE, CodedElement, OruHeader
from shared.reports.domain import (
    RESULT_STATUS,
    Language,
    RegionFindingResult,
    ReportVersion,
    ResultStatus,
    Section,
    StudyHeader,
)

AbnormalFlag = Literal["AA", "A", "N"]

HL7_VERSION = "2.5.1"
STUDY_UID_AUTHORITY = "MEDREGA_SUID"  # OBR-3 namespace when the study has no accession
DEFAULT_HEADER = OruHeader()
SENDING_APPLICATION = DEFAULT_HEADER.sending_application.namespace  # the default MSH-3
SERVICE_ID = DEFAULT_PROCEDURE.er7()  # OBR-4 when neither the study nor the site names one
SECTION_CODES: dict[str, str] = {
    "findings": "18782-3^Radiology Study observation (narrative)^LN",
    "impression": "19005-8^Radiology Imaging study [Impression] (narrative)^LN",
}
STUDY_UID_CODE = "110180^Study Instance UID^DCM"
SR_REFERENCE_CODE = "SR^DICOM Structured Report^99MEDREGA"
GSPS_REFERENCE_CODE = "GSPS^DICOM Grayscale Softcopy Presentation State^99MEDREGA"
KOS_REFERENCE_CODE = "KOS^DICOM Key Object Selection^99MEDREGA"
DRAFT_NOTE = (
    "AI-generated preliminary draft; not verified by a radiologist. "
    "AI生成的初步报告草稿，尚未经放射科医生审核。"
)
_SEX = {"M": "M", "F": "F", "O": "O"}  # DICOM (0010,0040) → HL7 table 0001; else U


@dataclass(frozen=True)
class ReportLine:
    section: Section
    en: str
    zh: str
    abnormal_flag: AbnormalFlag | None = None

    def text(self, language: Language) -> str:
        return self.en if language == "en" else self.zh


@dataclass(frozen=True)
class Interpreter:
    """The radiologist who signed (OBR-32)."""

    id: str  # e.g. the username
    name_pn: str  # DICOM PN, e.g. "Li^Wei"


@dataclass(frozen=True)
class OruInput:
    report_id: int
    report_version: int
    result_status: ResultStatus
    status_changed_at: datetime  # OBR-22
    observation_dtm: str  # OBR-7, HL7 DTM (study date/time)
    patient_id: str
    patient_name_pn: str | None  # DICOM PN, may hold '=' ideographic/phonetic groups
    patient_birth_date: str | None  # DICOM DA, YYYYMMDD
    patient_sex: str | None  # DICOM M/F/O
    accession_number: str | None
    study_instance_uid: str
    lines: tuple[ReportLine, ...]
    critical: bool = False
    sr_sop_instance_uid: str | None = None
    gsps_sop_instance_uids: tuple[str, ...] = ()
    kos_sop_instance_uid: str | None = None
    interpreter: Interpreter | None = None
    model: str | None = None  # "name version", for the draft note
    procedure: CodedElement | None = None  # OBR-4: the study's requested procedure, if known

    @classmethod
    def from_report(
        cls,
        version: ReportVersion,
        *,
        sr_sop_instance_uid: str | None = None,
        gsps_sop_instance_uids: tuple[str, ...] = (),
        kos_sop_instance_uid: str | None = None,
    ) -> OruInput:
        """From a report version (shared.reports): its sent findings and sentences only."""
        if version.status == "superseded":
            raise InvalidOru("a superseded report version is not sent to the RIS")
        study = version.study
        observation = _dicom_dtm(study.study_date, study.study_time) or _dtm(version.created_at)
        signer = version.signer
        interpreter = Interpreter(id=signer.username, name_pn=signer.name_pn) if signer else None
        model = " ".join(p for p in (version.model_name, version.model_version) if p) or None
        return cls(
            report_id=version.report_id,
            report_version=version.version,
            result_status=version.result_status,
            status_changed_at=signer.signed_at if signer else version.created_at,
            observation_dtm=observation,
            patient_id=study.patient_id or "",
            patient_name_pn=study.patient_name,
            patient_birth_date=study.patient_birth_date,
            patient_sex=study.patient_sex,
            accession_number=study.accession_number,
            study_instance_uid=study.study_instance_uid,
            lines=tuple(_lines_from_report(version)),
            critical=version.critical,
            sr_sop_instance_uid=sr_sop_instance_uid,
            gsps_sop_instance_uids=gsps_sop_instance_uids,
            kos_sop_instance_uid=kos_sop_instance_uid,
            interpreter=interpreter,
            model=model,
            procedure=study_procedure(study),
        )


def study_procedure(study: StudyHeader) -> CodedElement | None:
    """The study's procedure code as the listener indexed it; a code without its scheme means
    nothing to a RIS, so it is left out (the configured default goes instead)."""
    value = (study.procedure_code_value or "").strip()
    scheme = (study.procedure_code_scheme or "").strip()
    if not value or not scheme:
        return None
    return CodedElement(value, (study.procedure_code_meaning or "").strip() or value, scheme)


def result_status_for(report_status: str) -> ResultStatus:
    """Report status → OBR-25/OBX-11 (HL7 table 0123)."""
    try:
        if report_status == "superseded":
            raise KeyError(report_status)
        return RESULT_STATUS[str(report_status)]
    except KeyError:
        raise InvalidOru(f"a {report_status!r} report is not sent to the RIS") from None


def _line_flag(
    ordinals: Iterable[int], findings: Sequence[RegionFindingResult]
) -> AbnormalFlag | None:
    linked = [findings[o] for o in ordinals if 0 <= o < len(findings) and not findings[o].rejected]
    if not linked:
        return None
    if any(f.critical for f in linked):
        return "AA"
    if any(f.finding_code for f in linked):
        return "A"
    return "N"


def _lines_from_report(version: ReportVersion) -> list[ReportLine]:
    return [
        ReportLine(
            section=s.section,
            en=s.en,
            zh=s.zh,
            abnormal_flag=_line_flag(s.finding_ordinals, version.findings),
        )
        for s in version.sent_sentences
    ]


def _dtm(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.strftime("%Y%m%d%H%M%S%z")


def _dicom_dtm(date: str | None, time: str | None) -> str | None:
    """DICOM DA + TM → HL7 DTM (seconds precision; the modality's local time, no offset)."""
    date = (date or "").strip()
    if len(date) != 8 or not date.isdigit():
        return None
    clock = (time or "").replace(":", "").split(".", 1)[0].strip()
    if not clock.isdigit() or len(clock) not in (2, 4, 6):
        clock = ""
    return date + clock


def _flags_with_study_critical(data: OruInput) -> list[AbnormalFlag | None]:
    flags = [line.abnormal_flag for line in data.lines]
    # A critical study must show AA somewhere even if no sentence is linked to the finding:
    # flag the impression, which is what gets read (and phoned through) first.
    if data.critical and "AA" not in flags:
        flags = [
            "AA" if line.section == "impression" else f
            for line, f in zip(data.lines, flags, strict=True)
        ]
        if "AA" not in flags and flags:
            flags[0] = "AA"
    return flags


def _order_numbers(data: OruInput, accession_authority: str) -> tuple[str, str]:
    """(placer, filler) EI values, ER7-escaped; `accession_authority` is ER7 already (EI.2-4)."""
    accession = (data.accession_number or "").strip()
    if accession:
        ei = f"{escape(accession)}^{accession_authority}"
        return ei, ei
    return "", f"{escape(data.study_instance_uid)}^{STUDY_UID_AUTHORITY}"


def _segment(name: str, fields: dict[int, str]) -> str:
    """One ER7 segment from {field number: escaped ER7 value}; empty fields stay empty."""
    last = max((n for n, v in fields.items() if v), default=0)
    return "|".join([name, *(fields.get(n, "") for n in range(1, last + 1))])


def _build_er7(
    data: OruInput,
    control_id: str,
    *,
    header: OruHeader,
    languages: tuple[Language, ...],
    now: datetime,
) -> str:
    """The message as ER7 text, written directly: hl7apy builds it field by field ~10x slower
    (each assignment is parsed), which showed on 2 cores as ORUs queueing behind each other.
    `build_oru` still has hl7apy parse and strictly validate every message it returns."""
    status = data.result_status
    # MSH-1 is the field separator itself, so MSH-2 is the first field after "MSH|".
    msh = (
        "MSH|^~\\&|"
        + _segment(
            "",
            {
                1: header.sending_application.er7(),
                2: header.sending_facility.er7(),
                3: header.receiving_application.er7(),
                4: header.receiving_facility.er7(),
                5: _dtm(now),
                7: "ORU^R01^ORU_R01",
                8: control_id,
                9: header.processing_id,
                10: HL7_VERSION,
                16: "UNICODE UTF-8",
            },
        )[1:]
    )
    birth = (data.patient_birth_date or "").strip()
    pid = _segment(
        "PID",
        {
            1: "1",
            # CX.4 is an HD inside a component: its parts are sub-components (&).
            3: f"{escape(data.patient_id.strip())}^^^{header.patient_id_authority.er7('&')}^MR",
            5: "~".join(dicom_pn_to_xpn(data.patient_name_pn)),
            7: birth if len(birth) == 8 and birth.isdigit() else "",
            8: _SEX.get((data.patient_sex or "").strip().upper(), "U"),
        },
    )
    placer, filler = _order_numbers(data, header.accession_authority.er7())
    orc = _segment("ORC", {1: "RE", 2: placer, 3: filler})
    interpreter = ""
    if status in ("F", "C") and data.interpreter is not None:
        family, _, given = display_name(data.interpreter.name_pn).partition("^")
        # NDL-1 is a CNN: ID & family & given, subcomponents of the first component.
        interpreter = "&".join((escape(data.interpreter.id), escape(family), escape(given)))
    obr = _segment(
        "OBR",
        {
            1: "1",
            2: placer,
            3: filler,
            4: (data.procedure or header.default_procedure).er7(),
            7: data.observation_dtm,
            18: escape(data.accession_number or ""),  # IHE SWF: accession in OBR-18
            22: _dtm(data.status_changed_at),
            24: "RAD",
            25: status,
            32: interpreter,
        },
    )
    segments = [msh, pid, orc, obr]
    if status == "P":
        note = DRAFT_NOTE + (f" Model: {data.model}." if data.model else "")
        segments.append(_segment("NTE", {1: "1", 2: "L", 3: escape(note)}))
    segments.extend(_observations(data, languages))
    return "\r".join(segments)


def _observations(data: OruInput, languages: tuple[Language, ...]) -> list[str]:
    rows: list[tuple[str, str, str, str, str]] = []
    flags = _flags_with_study_critical(data)
    for number, (line, flag) in enumerate(zip(data.lines, flags, strict=True), start=1):
        for language in languages:
            text = escape(line.text(language)).strip()
            if text:
                rows.append(
                    ("TX", SECTION_CODES[line.section], f"{number}.{language}", text, flag or "")
                )
    rows.append(("ST", STUDY_UID_CODE, "SR", escape(data.study_instance_uid), ""))
    if data.sr_sop_instance_uid:
        rows.append(
            ("RP", SR_REFERENCE_CODE, "SR", f"{escape(data.sr_sop_instance_uid)}^PACS^AP^DICOM", "")
        )
    for number, uid in enumerate(data.gsps_sop_instance_uids, start=1):
        rows.append(
            ("RP", GSPS_REFERENCE_CODE, f"GSPS.{number}", f"{escape(uid)}^PACS^AP^DICOM", "")
        )
    if data.kos_sop_instance_uid:
        uid = escape(data.kos_sop_instance_uid)
        rows.append(("RP", KOS_REFERENCE_CODE, "KOS", f"{uid}^PACS^AP^DICOM", ""))
    return [
        _segment(
            "OBX",
            {1: str(i), 2: kind, 3: code, 4: sub_id, 5: value, 8: flag, 11: data.result_status},
        )  # fmt: skip
        for i, (kind, code, sub_id, value, flag) in enumerate(rows, start=1)
    ]


def build_oru(
    data: OruInput,
    control_id: str,
    *,
    header: OruHeader = DEFAULT_HEADER,
    languages: Sequence[Language] = ("en", "zh"),
    now: datetime | None = None,
) -> str:
    """The ORU^R01 as ER7 (segments separated and terminated by `\\r`). Raises InvalidOru.
    `header`: the site's MSH-3..6, PID-3 authority, order-number authority, default OBR-4."""
    if not data.patient_id.strip():
        raise InvalidOru("study has no Patient ID; the RIS cannot match the result")
    if not 0 < len(control_id) <= 20 or escape(control_id) != control_id:
        raise InvalidOru("control ID must be 1-20 characters without HL7 delimiters")
    if header.processing_id not in ("P", "T", "D"):
        raise InvalidOru(f"processing ID must be P, T or D, not {header.processing_id!r}")
    if not languages or any(lang not in ("en", "zh") for lang in languages):
        raise InvalidOru(f"languages must be a non-empty subset of en, zh: {languages!r}")
    er7 = _build_er7(
        data,
        control_id,
        header=header,
        languages=tuple(dict.fromkeys(languages)),
        now=now or datetime.now(UTC),
    )
    validate_oru(er7)
    return er7 + "\r"


def validate_oru(er7: str) -> None:
    """hl7apy parses the message back (groups found) and its strict Validator checks structure,
    cardinality and datatypes. Parsed TOLERANT: hl7apy types the "varies" OBX-5 as ST (199
    characters), while HL7 allows 65536 for TX, and real sentences get longer."""
    try:
        message = parse_message(
            er7.strip("\r"), validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=True
        )
        message.validate()
    except ValidationError as exc:  # structural: names elements, never values (no PHI)
        raise InvalidOru(f"ORU failed HL7 validation: {exc}") from exc
    except HL7apyException as exc:  # may quote the offending value: keep it out of last_error
        raise InvalidOru(f"ORU could not be built: {type(exc).__name__}") from exc
