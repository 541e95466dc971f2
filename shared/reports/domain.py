"""Report domain types: what every model backend produces and everything downstream reads.

Both backends (`onnx`: the bundled reference model; `mllm`: a served MedRegA) return a
`DraftResult`. The worker stores it (reports + region_findings), the SR builder and the HL7
builder read it (or its database rows, which carry the same fields), the UI shows it.

Boxes are in *source-image pixel* coordinates of the image named by `ImageRef`
(x to the right = columns, y down = rows; the patient's right is on the image's left).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Language = Literal["en", "zh"]
Section = Literal["findings", "impression"]
# A version's status (reports.status); the lifecycle (lifecycle.py) says which may follow which.
ReportState = Literal["draft", "edited", "signed", "corrected", "superseded"]
# What a message says of its version: HL7 table 0123 (OBR-25, OBX-11); the SR's flags follow.
ResultStatus = Literal["P", "F", "C"]
Review = Literal["proposed", "accepted", "rejected", "adjusted"]


@dataclass(frozen=True)
class ImageRef:
    """One frame of one stored instance."""

    sop_instance_uid: str
    sop_class_uid: str
    frame: int = 1  # 1-based, as DICOM counts frames


@dataclass(frozen=True)
class PixelBox:
    x1: float
    y1: float
    x2: float
    y2: float

    def __post_init__(self) -> None:
        if not (self.x2 > self.x1 and self.y2 > self.y1):
            raise ValueError(f"box must have x2 > x1 and y2 > y1, got {self}")

    def polyline(self) -> list[tuple[float, float]]:
        """Closed 5-point polygon (DICOM has no rectangle graphic type)."""
        return [
            (self.x1, self.y1),
            (self.x2, self.y1),
            (self.x2, self.y2),
            (self.x1, self.y2),
            (self.x1, self.y1),
        ]


@dataclass
class RegionFindingResult:
    """One region the report talks about: an abnormality in it, or the region reported normal."""

    region_code: str  # shared/vocab code
    region_name_en: str
    region_name_zh: str
    finding_code: str | None  # None: the region is reported as normal
    finding_name_en: str | None
    finding_name_zh: str | None
    probability: float | None  # calibrated; None where the backend gives none (MedRegA)
    image: ImageRef | None  # key image where it is seen best
    box: PixelBox | None
    sentence_en: str
    sentence_zh: str
    size_mm: float | None = None
    critical: bool = False
    box_flag: str | None = None  # e.g. "out_of_range", "inverted" from a text parser
    review: Review = "proposed"  # the radiologist's verdict; a rejected one is never sent

    @property
    def rejected(self) -> bool:
        return self.review == "rejected"


@dataclass
class ReportSentence:
    section: Section
    en: str
    zh: str
    finding_ordinals: list[int] = field(default_factory=list)  # indexes into findings
    stale: Language | None = None  # the language not updated after an edit of the other

    def excluded(self, rejected: set[int]) -> bool:
        """Grounded on findings that were all rejected: kept in the version, never sent."""
        return bool(self.finding_ordinals) and all(o in rejected for o in self.finding_ordinals)


@dataclass
class DraftResult:
    domain: str  # e.g. "cxr", "chest_ct", "abd_ct", "brain_mr"
    applicable: bool  # False: unsupported input, `reason` says why; no report
    reason: str | None
    model_name: str
    model_version: str
    backend: Literal["onnx", "mllm"]
    findings: list[RegionFindingResult] = field(default_factory=list)
    sentences: list[ReportSentence] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    # What a reviewer should know about how the draft was made (stored on the job).
    notes: list[str] = field(default_factory=list)

    @property
    def critical(self) -> bool:
        return any(f.critical for f in self.findings)

    def section_text(self, section: Section, language: Language) -> str:
        return " ".join(getattr(s, language) for s in self.sentences if s.section == section)


@dataclass(frozen=True)
class StudyHeader:
    """The study's identity as the PACS gave it (DICOM values; PN as stored)."""

    study_instance_uid: str
    patient_id: str | None = None
    patient_name: str | None = None  # DICOM PN; several names joined with "\\"
    patient_birth_date: str | None = None  # DA
    patient_sex: str | None = None
    accession_number: str | None = None
    study_date: str | None = None  # DA
    study_time: str | None = None  # TM
    # Requested Procedure Code (0032,1064), else Procedure Code (0008,1032): the ORU's OBR-4.
    procedure_code_value: str | None = None
    procedure_code_scheme: str | None = None
    procedure_code_meaning: str | None = None


@dataclass(frozen=True)
class Signer:
    username: str
    name_pn: str  # DICOM PN for the SR's Verifying Observer and HL7 OBR-32
    signed_at: datetime


RESULT_STATUS: dict[str, ResultStatus] = {
    "draft": "P",
    "edited": "P",  # changed by a radiologist but not signed: still preliminary
    "superseded": "P",
    "signed": "F",
    "corrected": "C",
}


@dataclass
class ReportVersion:
    """One stored version of a study's report: what the SR and the ORU are built from.

    `findings[i]` is the finding with ordinal i (rejected ones included, so sentence ordinals
    stay valid); `sent_findings` and `sent_sentences` are what a message carries.
    """

    report_id: int
    version: int
    status: ReportState
    study: StudyHeader
    domain: str
    model_name: str
    model_version: str
    created_at: datetime
    findings: list[RegionFindingResult] = field(default_factory=list)
    sentences: list[ReportSentence] = field(default_factory=list)
    signer: Signer | None = None  # signed and corrected versions only

    @property
    def result_status(self) -> ResultStatus:
        return RESULT_STATUS[self.status]

    @property
    def is_final(self) -> bool:
        return self.status in ("signed", "corrected")

    @property
    def rejected_ordinals(self) -> set[int]:
        return {i for i, f in enumerate(self.findings) if f.rejected}

    @property
    def sent_findings(self) -> list[RegionFindingResult]:
        return [f for f in self.findings if not f.rejected]

    @property
    def sent_sentences(self) -> list[ReportSentence]:
        rejected = self.rejected_ordinals
        return [s for s in self.sentences if not s.excluded(rejected)]

    @property
    def critical(self) -> bool:
        return any(f.critical for f in self.sent_findings)

    def section_text(self, section: Section, language: Language) -> str:
        parts = (getattr(s, language).strip() for s in self.sent_sentences if s.section == section)
        return " ".join(p for p in parts if p)
