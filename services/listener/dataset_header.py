"""Read just enough of a received instance's header to file and index it (never the pixels)."""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from shared.dicom.uids import is_own_uid, is_valid_uid

OWN_MANUFACTURER = "medrega-pacs"


class UndecodableDatasetError(ValueError):
    """The bytes are not a decodable DICOM dataset (answered 0xC210, 'cannot decode')."""


class IncompleteDatasetError(ValueError):
    """Decodable, but without the identifiers we file it under (answered 0xC000, 'cannot
    understand'): a missing or malformed Study/Series/SOP Instance/SOP Class UID."""


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str | None
    manufacturer: str | None
    instance_number: int | None
    rows: int | None
    columns: int | None
    number_of_frames: int | None
    series_number: int | None
    series_description: str | None
    body_part_examined: str | None
    # Study-level attributes (PHI: kept in Postgres, never logged).
    patient_id: str | None
    patient_name: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    accession_number: str | None
    study_date: str | None
    study_time: str | None
    study_description: str | None
    referring_physician: str | None
    specific_character_set: str | None
    # The requested procedure (ORU OBR-4): (code value, coding scheme, meaning), or None.
    procedure_code: tuple[str, str, str | None] | None = None

    @property
    def is_own_output(self) -> bool:
        """Our own SR coming back from the PACS: never drafted, never 'new' input."""
        return (self.modality == "SR" and is_own_uid(self.sop_instance_uid)) or (
            self.manufacturer == OWN_MANUFACTURER
        )


def read_header(part10_bytes: bytes) -> InstanceHeader:
    """Parse a Part 10 byte string up to (not including) the pixel data."""
    try:
        dataset = dcmread(BytesIO(part10_bytes), stop_before_pixels=True)
        _check_not_truncated(dataset)
        # pydicom converts raw elements lazily: touch what we need while errors still mean
        # 'undecodable' rather than surfacing later.
        values = _extract(dataset)
    except (IncompleteDatasetError, UndecodableDatasetError):
        raise
    except Exception as exc:  # pydicom raises many types on garbage; all mean the same here
        # Only the type: pydicom's messages may quote element values (PHI) and this is logged.
        raise UndecodableDatasetError(type(exc).__name__) from exc
    return values


UNDEFINED_LENGTH = 0xFFFFFFFF


def _check_not_truncated(dataset: Dataset) -> None:
    """pydicom reads garbage leniently (random bytes become one huge, truncated element); an
    element shorter than its declared length is how undecodable input shows up."""
    for element in dataset.elements():
        if not isinstance(element, RawDataElement) or element.value is None:
            continue
        if element.length != UNDEFINED_LENGTH and len(element.value) != element.length:
            raise UndecodableDatasetError(
                f"element {element.tag} declares {element.length} bytes, has {len(element.value)}"
            )


def _extract(dataset: Dataset) -> InstanceHeader:
    uids = {}
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        value = str(dataset.get(keyword, "") or "").strip()
        if not is_valid_uid(value):
            raise IncompleteDatasetError(f"{keyword} missing or not a valid UID")
        uids[keyword] = value
    return InstanceHeader(
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        modality=_text(dataset, "Modality", 16),
        manufacturer=_text(dataset, "Manufacturer", 64),
        instance_number=_integer(dataset, "InstanceNumber"),
        rows=_integer(dataset, "Rows"),
        columns=_integer(dataset, "Columns"),
        number_of_frames=_integer(dataset, "NumberOfFrames"),
        series_number=_integer(dataset, "SeriesNumber"),
        series_description=_text(dataset, "SeriesDescription", 64),
        body_part_examined=_text(dataset, "BodyPartExamined", 16),
        patient_id=_text(dataset, "PatientID", 64),
        patient_name=_text(dataset, "PatientName", 324),
        patient_birth_date=_text(dataset, "PatientBirthDate", 8),
        patient_sex=_text(dataset, "PatientSex", 16),
        accession_number=_text(dataset, "AccessionNumber", 16),
        study_date=_text(dataset, "StudyDate", 8),
        study_time=_text(dataset, "StudyTime", 16),
        study_description=_text(dataset, "StudyDescription", 64),
        referring_physician=_text(dataset, "ReferringPhysicianName", 324),
        specific_character_set=_character_set(dataset),
        procedure_code=_procedure_code(dataset),
    )


def _text(dataset: Dataset, keyword: str, max_length: int) -> str | None:
    """An attribute as text; several values (a `\\` in the element, e.g. two Patient Names)
    as DICOM writes them, joined by `\\`, never as Python's list repr "['A^B', 'C^D']". Kept
    exactly as received otherwise: `^` and `=` are PN's own separators, and HL7 delimiters
    (`|^~\\&`) mean nothing here (the ORU builder escapes them)."""
    value = dataset.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue):
        text = "\\".join(str(item).strip() for item in value).strip()
    else:
        text = str(value).strip()
    # Columns are sized to the DICOM VR maximum; a non-conformant sender must not fail the store.
    return text[:max_length] or None


# Where a study's procedure code is: the Requested Procedure Code Sequence (0032,1064), which
# modality worklists fill from the RIS order, else the Procedure Code Sequence (0008,1032).
PROCEDURE_CODE_SEQUENCES = ("RequestedProcedureCodeSequence", "ProcedureCodeSequence")


def _procedure_code(dataset: Dataset) -> tuple[str, str, str | None] | None:
    """The first usable code item (value and scheme within their columns' 16 characters; a
    longer value is dropped, never cut: a truncated code is a different code)."""
    for keyword in PROCEDURE_CODE_SEQUENCES:
        for item in dataset.get(keyword) or []:
            value = str(item.get("CodeValue", "") or "").strip()
            scheme = str(item.get("CodingSchemeDesignator", "") or "").strip()
            if not value or not scheme or len(value) > 16 or len(scheme) > 16:
                continue
            meaning = str(item.get("CodeMeaning", "") or "").strip()[:64] or None
            return value, scheme, meaning
    return None


def _integer(dataset: Dataset, keyword: str) -> int | None:
    value = dataset.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _character_set(dataset: Dataset) -> str | None:
    value = dataset.get("SpecificCharacterSet")
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value[:128]
    return "\\".join(str(item) for item in value)[:128]
