"""Report domain types: what every model backend produces and everything downstream reads.

Both backends (`onnx`: the bundled reference model; `mllm`: a served MedRegA) return a
`DraftResult`. The worker stores it (reports + region_findings), the SR builder and the HL7
builder read it (or its database rows, which carry the same fields), the UI shows it.

Boxes are in *source-image pixel* coordinates of the image named by `ImageRef`
(x to the right = columns, y down = rows; the patient's right is on the image's left).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Language = Literal["en", "zh"]
Section = Literal["findings", "impression"]


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


@dataclass
class ReportSentence:
    section: Section
    en: str
    zh: str
    finding_ordinals: list[int] = field(default_factory=list)  # indexes into findings


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
