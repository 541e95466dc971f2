"""What goes into our DICOM SR: the report's content, the document context, and the codes.

`SrReport` is the report (region findings + narrative per language), shaped like the model's
`DraftResult` so the worker can build it from a fresh draft or from stored (possibly edited)
report rows. `SrContext` is everything about the document that is not the report itself:
identity and version, status, source image headers, the algorithm, the radiologist who signed,
the SR it replaces. Both validate eagerly; `sr_builder.build_report_sr` turns them into a
Comprehensive 3D SR.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage

from shared.reports.domain import DraftResult, Language, RegionFindingResult

ReportStatusName = Literal["draft", "final", "corrected"]
SrLanguage = Literal["en", "zh", "both"]

MANUFACTURER = "medrega-pacs"

# RFC 5646 language tags (DICOM CID 5000) for TID 1204 "Language of Content Item and
# Descendants": the root says which language the document is in; with both languages the
# Chinese text items carry their own modifier.
LANGUAGE_CODES: dict[Language, hd.sr.CodedConcept] = {
    "en": hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)"),
    "zh": hd.sr.CodedConcept("zh-CN", "RFC5646", "Chinese (China)"),
}

# Procedure Reported (TID 1500 row 4) per domain of shared/vocab/domains.json. These would
# better live in domains.json itself (one place for each fact); until they do, an unknown
# domain falls back to DICOM CID 100's "unspecified body region" code for the modality.
PROCEDURE_BY_DOMAIN: dict[str, hd.sr.CodedConcept] = {
    "cxr": hd.sr.CodedConcept("399208008", "SCT", "Plain chest X-ray"),
    "chest_ct": hd.sr.CodedConcept("169069000", "SCT", "Computed tomography of chest"),
    "abd_ct": hd.sr.CodedConcept("169070004", "SCT", "Computed tomography of abdomen"),
    "brain_mr": hd.sr.CodedConcept("24590-2", "LN", "MR Brain"),
}
PROCEDURE_BY_MODALITY: dict[str, hd.sr.CodedConcept] = {
    "CT": hd.sr.CodedConcept.from_code(codes.cid100.CTUnspecifiedBodyRegion),
    "MR": hd.sr.CodedConcept.from_code(codes.cid100.MRIUnspecifiedBodyRegion),
    "DX": hd.sr.CodedConcept.from_code(codes.cid100.XRUnspecifiedBodyRegion),
    "CR": hd.sr.CodedConcept.from_code(codes.cid100.XRUnspecifiedBodyRegion),
}
IMAGING_PROCEDURE = hd.sr.CodedConcept.from_code(codes.cid100.ImagingProcedure)

# Series numbers high enough not to collide with a modality's own series.
DEFAULT_SERIES_NUMBER: dict[ReportStatusName, int] = {
    "draft": 9901,
    "final": 9902,
    "corrected": 9903,
}
SERIES_DESCRIPTION: dict[ReportStatusName, str] = {
    "draft": "AI draft report (medrega-pacs)",
    "final": "Signed report",
    "corrected": "Corrected report",
}

# Header attributes a source image must have for us to reference it and copy patient/study
# information from it (Type 1 in every image IOD we read).
REQUIRED_SOURCE_ATTRIBUTES = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "Rows",
    "Columns",
)


def languages_of(language: SrLanguage) -> tuple[Language, ...]:
    """The report languages an SR configured for `language` carries, primary first."""
    return ("en", "zh") if language == "both" else (language,)


@dataclass(frozen=True)
class SrReport:
    """The report to encode: region findings and the narrative per language."""

    domain: str
    findings: Sequence[RegionFindingResult]
    findings_text: Mapping[Language, str]
    impression_text: Mapping[Language, str]

    def __post_init__(self) -> None:
        if not self.domain:
            raise ValueError("SrReport.domain must not be empty")
        for name, texts in (("findings", self.findings_text), ("impression", self.impression_text)):
            for lang, text in texts.items():
                if lang not in LANGUAGE_CODES:
                    raise ValueError(f"{name} text in unknown language {lang!r}")
                if not isinstance(text, str):
                    raise TypeError(f"{name} text ({lang}) must be str, got {type(text).__name__}")
        for index, finding in enumerate(self.findings):
            if not isinstance(finding, RegionFindingResult):
                raise TypeError(f"findings[{index}] must be a RegionFindingResult")
            if finding.box is not None and finding.image is None:
                raise ValueError(
                    f"findings[{index}] ({finding.region_code}) has a box but no image: "
                    "a box is meaningless without the image it was drawn on"
                )
            if finding.probability is not None and not 0.0 <= finding.probability <= 1.0:
                raise ValueError(
                    f"findings[{index}] ({finding.region_code}): probability must lie in "
                    f"[0, 1] (Certainty of Finding is sent as a percentage), got "
                    f"{finding.probability}"
                )

    @classmethod
    def from_draft(cls, draft: DraftResult) -> SrReport:
        """The report exactly as the model drafted it."""
        if not draft.applicable:
            raise ValueError(f"draft is not applicable ({draft.reason}); there is no report")
        langs: tuple[Language, ...] = ("en", "zh")
        return cls(
            domain=draft.domain,
            findings=list(draft.findings),
            findings_text={lang: draft.section_text("findings", lang) for lang in langs},
            impression_text={lang: draft.section_text("impression", lang) for lang in langs},
        )


@dataclass(frozen=True)
class VerifyingObserver:
    """The radiologist who signed (Verifying Observer Sequence and the person observer)."""

    name: str  # DICOM PN, "Family^Given" (User.dicom_person_name)
    organization: str
    verified_at: datetime

    def __post_init__(self) -> None:
        if not self.name.strip("^ "):
            raise ValueError("VerifyingObserverName must not be empty")
        _check_person_name("VerifyingObserverName", self.name)
        if not self.organization.strip():
            raise ValueError("VerifyingOrganization must not be empty")


def _check_person_name(keyword: str, value: str) -> None:
    # A PN without '^' is nearly always a name that was never split into family^given; the
    # PACS and the RIS would show it wrongly (a single-component name is written "Name^").
    groups = value.split("=")
    if (
        "^" not in groups[0]
        or "\\" in value
        or not value.isprintable()
        or len(groups) > 3
        or any(len(group.split("^")) > 5 or len(group) > 64 for group in groups)
    ):
        raise ValueError(
            f"{keyword} {value!r} is not a DICOM PN 'Family^Given' (a single-component "
            "name needs a trailing '^')"
        )


@dataclass(frozen=True)
class PredecessorRef:
    """An SR this one replaces (Predecessor Documents Sequence): the draft a signature
    finalises, or the signed SR a correction amends."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str = Comprehensive3DSRStorage

    def as_dataset(self) -> Dataset:
        """The minimal header highdicom's `previous_versions=` reads."""
        ds = Dataset()
        ds.StudyInstanceUID = self.study_instance_uid
        ds.SeriesInstanceUID = self.series_instance_uid
        ds.SOPInstanceUID = self.sop_instance_uid
        ds.SOPClassUID = self.sop_class_uid
        return ds


@dataclass(frozen=True)
class SrContext:
    """Everything about the SR document that is not the report content."""

    report_id: str | int
    version: int
    status: ReportStatusName
    # Headers (read with stop_before_pixels) of every image a finding points at; all of one
    # study. The first one supplies the patient and study attributes.
    source_images: Sequence[Dataset]
    model_name: str
    model_version: str
    # When the report content was made (draft: drafted; final: signed). Every date/time in the
    # SR comes from here or from `verifying_observer.verified_at`, so that building the same
    # version twice gives the same bytes, not only the same UIDs.
    content_datetime: datetime
    language: SrLanguage = "both"
    verifying_observer: VerifyingObserver | None = None
    predecessor: PredecessorRef | None = None
    manufacturer: str = MANUFACTURER
    device_serial_number: str | None = None
    software_version: str | None = None  # medrega-pacs' own version
    institution_name: str | None = None
    series_number: int | None = None  # default: DEFAULT_SERIES_NUMBER[status]
    # Normal regions are said in the narrative ("The left lung is unremarkable."), not as
    # measurement groups: a viewer lists every group as a measurement (OHIF tracks each one),
    # and a dozen "normal" boxes bury the one finding the radiologist must see. A site that
    # wants every region the grounded report talks about drawn turns this on.
    normal_region_groups: bool = False

    def __post_init__(self) -> None:
        if self.status not in get_args(ReportStatusName):
            raise ValueError(
                f"status must be one of {get_args(ReportStatusName)}, got {self.status!r}"
            )
        if self.language not in get_args(SrLanguage):
            raise ValueError(
                f"language must be one of {get_args(SrLanguage)}, got {self.language!r}"
            )
        if not str(self.report_id):
            raise ValueError("report_id must not be empty (it seeds the SR's UIDs)")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise ValueError(
                f"version must be a positive int (InstanceNumber), got {self.version!r}"
            )
        if not self.model_name or not self.model_version:
            raise ValueError("model_name and model_version are required (Algorithm Identification)")
        if self.series_number is not None and self.series_number < 1:
            raise ValueError(f"SeriesNumber must be positive, got {self.series_number}")
        if len(self.source_images) == 0:
            raise ValueError("source_images must hold at least one image header (evidence)")
        study_uids = set()
        for index, image in enumerate(self.source_images):
            for keyword in REQUIRED_SOURCE_ATTRIBUTES:
                if keyword not in image or image[keyword].value in (None, ""):
                    raise ValueError(f"source_images[{index}] has no {keyword}")
            study_uids.add(str(image.StudyInstanceUID))
        if len(study_uids) != 1:
            raise ValueError(
                f"source_images span several StudyInstanceUID values {sorted(study_uids)}; "
                "one SR reports one study"
            )
        if self.status == "draft":
            if self.verifying_observer is not None:
                raise ValueError("a draft is UNVERIFIED: VerifyingObserverSequence must be empty")
        else:
            if self.verifying_observer is None:
                raise ValueError(
                    f"a {self.status} report needs a verifying observer (VerifyingObserverSequence)"
                )
            # No predecessor is legitimate: the draft's SR may never have reached the PACS (it
            # was cancelled by the signature), and then the final SR replaces nothing.

    @property
    def study_instance_uid(self) -> str:
        return str(self.source_images[0].StudyInstanceUID)

    @property
    def languages(self) -> tuple[Language, ...]:
        return languages_of(self.language)

    @property
    def primary_language(self) -> Language:
        return self.languages[0]

    def source_image(self, sop_instance_uid: str) -> Dataset | None:
        for image in self.source_images:
            if image.SOPInstanceUID == sop_instance_uid:
                return image
        return None
