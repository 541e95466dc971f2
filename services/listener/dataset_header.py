"""Read just enough of a received instance's header to file and index it (never the pixels)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any, cast

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from services.listener.header_scan import ScannedHeader, scan
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
    """Parse a Part 10 byte string up to (not including) the pixel data: by a struct walk of
    its elements where that reads it with certainty (header_scan.py), else with pydicom."""
    scanned = scan(part10_bytes, _SCANNED_TAGS, _PROCEDURE_SEQUENCE_TAGS)
    if scanned is not None:
        try:
            return _header_from_scan(scanned)
        except _NeedsPydicom:
            pass
    return read_header_with_pydicom(part10_bytes)


def read_header_with_pydicom(part10_bytes: bytes) -> InstanceHeader:
    """`read_header` through pydicom's reader (the reference the scan is compared with)."""
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


def _extract(dataset: Dataset, fast: bool = True) -> InstanceHeader:
    """The header's values. `fast`: read ASCII values straight from the raw elements (the same
    values, tests compare both ways; pydicom's conversion of ~24 elements cost about as much
    as parsing the header), else let pydicom convert them all."""
    get = _RawValues(dataset) if fast else dataset.get
    return _header_from(get, _procedure_code(dataset))


def _header_from(
    get: _Getter, procedure_code: tuple[str, str, str | None] | None
) -> InstanceHeader:
    uids = {}
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        value = str(get(keyword) or "").strip()
        if not is_valid_uid(value):
            raise IncompleteDatasetError(f"{keyword} missing or not a valid UID")
        uids[keyword] = value
    return InstanceHeader(
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        modality=_text(get, "Modality", 16),
        manufacturer=_text(get, "Manufacturer", 64),
        instance_number=_integer(get, "InstanceNumber"),
        rows=_integer(get, "Rows"),
        columns=_integer(get, "Columns"),
        number_of_frames=_integer(get, "NumberOfFrames"),
        series_number=_integer(get, "SeriesNumber"),
        series_description=_text(get, "SeriesDescription", 64),
        body_part_examined=_text(get, "BodyPartExamined", 16),
        patient_id=_text(get, "PatientID", 64),
        patient_name=_text(get, "PatientName", 324),
        patient_birth_date=_text(get, "PatientBirthDate", 8),
        patient_sex=_text(get, "PatientSex", 16),
        accession_number=_text(get, "AccessionNumber", 16),
        study_date=_text(get, "StudyDate", 8),
        study_time=_text(get, "StudyTime", 16),
        study_description=_text(get, "StudyDescription", 64),
        referring_physician=_text(get, "ReferringPhysicianName", 324),
        specific_character_set=_character_set(get),
        procedure_code=procedure_code,
    )


def _text(get: _Getter, keyword: str, max_length: int) -> str | None:
    """An attribute as text; several values (a `\\` in the element, e.g. two Patient Names)
    as DICOM writes them, joined by `\\`, never as Python's list repr "['A^B', 'C^D']". Kept
    exactly as received otherwise: `^` and `=` are PN's own separators, and HL7 delimiters
    (`|^~\\&`) mean nothing here (the ORU builder escapes them)."""
    value = get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue):
        text = "\\".join(str(item).strip() for item in value).strip()
    else:
        text = str(value).strip()
    # Columns are sized to the DICOM VR maximum; a non-conformant sender must not fail the store.
    return _without_nul(text)[:max_length] or None


def _without_nul(text: str) -> str:
    """PostgreSQL text cannot hold NUL: a value with one inside (non-conformant, but seen) would
    fail its row and the sender's every retry. The index keeps the rest; the file is untouched."""
    return text.replace("\x00", "") if "\x00" in text else text


# Where a study's procedure code is: the Requested Procedure Code Sequence (0032,1064), which
# modality worklists fill from the RIS order, else the Procedure Code Sequence (0008,1032).
PROCEDURE_CODE_SEQUENCES = ("RequestedProcedureCodeSequence", "ProcedureCodeSequence")


def _procedure_code(dataset: Dataset) -> tuple[str, str, str | None] | None:
    """The first usable code item (value and scheme within their columns' 16 characters; a
    longer value is dropped, never cut: a truncated code is a different code)."""
    for keyword in PROCEDURE_CODE_SEQUENCES:
        for item in dataset.get(keyword) or []:
            code = _usable_code(
                item.get("CodeValue", ""),
                item.get("CodingSchemeDesignator", ""),
                item.get("CodeMeaning", ""),
            )
            if code is not None:
                return code
    return None


def _usable_code(value: Any, scheme: Any, meaning: Any) -> tuple[str, str, str | None] | None:
    if any(isinstance(part, MultiValue) for part in (value, scheme, meaning)):
        return None  # VM 1 attributes with several values: no code to trust (not a list's repr)
    value = _without_nul(str(value or "")).strip()
    scheme = _without_nul(str(scheme or "")).strip()
    if not value or not scheme or len(value) > 16 or len(scheme) > 16:
        return None
    return value, scheme, _without_nul(str(meaning or "")).strip()[:64] or None


def _integer(get: _Getter, keyword: str) -> int | None:
    value = get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _character_set(get: _Getter) -> str | None:
    value = get("SpecificCharacterSet")
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return _without_nul(value)[:128]
    return _without_nul("\\".join(str(item) for item in value))[:128]


_Getter = Callable[[str], Any]

# Value representations read from raw bytes when ASCII: the text of these VRs decodes the same in
# every character set for bytes below 0x80 (no ISO 2022 escape); a PN only without component
# groups ('='). Sequences and everything else go to pydicom.
_TEXT_VRS = frozenset({"UI", "CS", "DA", "TM", "IS", "LO", "SH", "PN"})
_FAST_KEYWORDS = (
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality",
    "Manufacturer", "InstanceNumber", "Rows", "Columns", "NumberOfFrames", "SeriesNumber",
    "SeriesDescription", "BodyPartExamined", "PatientID", "PatientBirthDate", "PatientSex",
    "AccessionNumber", "StudyDate", "StudyTime", "StudyDescription", "SpecificCharacterSet",
    "PatientName", "ReferringPhysicianName",
)  # fmt: skip
_FAST_TAGS = {
    keyword: (Tag(cast(int, tag_for_keyword(keyword))), dictionary_VR(keyword))
    for keyword in _FAST_KEYWORDS
}
_UNSIGNED_SHORT = struct.Struct("<H")


class _RawValues:
    """`dataset.get(keyword)` for the attributes we index, from the raw element where its bytes
    are plain ASCII of the expected VR (little endian), else through pydicom."""

    def __init__(self, dataset: Dataset) -> None:
        self._dataset = dataset

    def __call__(self, keyword: str) -> Any:
        known = _FAST_TAGS.get(keyword)
        if known is not None:
            tag, vr = known
            element = self._dataset.get_item(tag)
            if element is None:
                return None
            if (
                isinstance(element, RawDataElement)
                and element.is_little_endian
                and element.VR in (None, vr)
            ):
                value = element.value
                if value is None or value == b"":
                    return None
                if not isinstance(value, bytes):
                    pass  # pydicom's business
                elif vr == "US":
                    if len(value) == 2:
                        return _UNSIGNED_SHORT.unpack(value)[0]
                elif vr == "PN" and b"=" in value:
                    pass  # component groups: pydicom's PersonName
                else:
                    text = _ascii_text(value, vr)
                    if text is not None:
                        return text
        return self._dataset.get(keyword)


def _ascii_text(value: bytes, vr: str) -> str | None:
    """The text of a raw value of a text VR, where ASCII makes it the same in every character
    set (no ISO 2022 escape, no NUL but a UID's padding), else None."""
    if vr not in _TEXT_VRS or not value.isascii() or b"\x1b" in value:
        return None
    if vr != "UI" and b"\x00" in value:
        return None
    return _as_text(value.decode("ascii"), vr)


class _NeedsPydicom(Exception):
    """The scanned bytes of a value need pydicom's conversion: read the whole header with it."""


_SCANNED_TAGS = frozenset(int(tag) for tag, _ in _FAST_TAGS.values())
# The procedure code sequences' tags, in the order they are tried.
_PROCEDURE_SEQUENCE_TAG_ORDER = tuple(
    int(Tag(cast(int, tag_for_keyword(k)))) for k in PROCEDURE_CODE_SEQUENCES
)
_PROCEDURE_SEQUENCE_TAGS = frozenset(_PROCEDURE_SEQUENCE_TAG_ORDER)
_CODE_ELEMENT_VRS = {0x00080100: "SH", 0x00080102: "SH", 0x00080104: "LO"}


def _scanned_value(raw: tuple[bytes | None, bytes] | None, vr: str) -> Any:
    """What `_RawValues` returns for these bytes, or _NeedsPydicom."""
    if raw is None:
        return None
    explicit_vr, value = raw
    if explicit_vr is not None and explicit_vr.decode("ascii") != vr:
        raise _NeedsPydicom
    if value == b"":
        return None
    if vr == "US":
        if len(value) != 2:
            raise _NeedsPydicom
        return _UNSIGNED_SHORT.unpack(value)[0]
    if vr == "PN" and b"=" in value:
        raise _NeedsPydicom
    text = _ascii_text(value, vr)
    if text is None:
        raise _NeedsPydicom
    return text


def _header_from_scan(scanned: ScannedHeader) -> InstanceHeader:
    def get(keyword: str) -> Any:
        tag, vr = _FAST_TAGS[keyword]
        return _scanned_value(scanned.elements.get(int(tag)), vr)

    return _header_from(get, _scanned_procedure_code(scanned))


def _scanned_procedure_code(scanned: ScannedHeader) -> tuple[str, str, str | None] | None:
    for tag in _PROCEDURE_SEQUENCE_TAG_ORDER:
        for item in scanned.sequences.get(tag, []):
            values = []
            for element, vr in _CODE_ELEMENT_VRS.items():
                value = _scanned_value(item.get(element), vr)
                if isinstance(value, str) and "\\" in value:
                    raise _NeedsPydicom  # several values: pydicom's MultiValue text
                values.append(value)
            code = _usable_code(*values)
            if code is not None:
                return code
    return None


def _as_text(raw: str, vr: str) -> str | None:
    """What `_text`/`_integer` make of pydicom's value for these ASCII bytes (None: ask pydicom):
    several values joined by '\\', each stripped; a UID's NUL padding dropped."""
    if vr == "UI":
        raw = raw.replace("\x00", " ")
    if vr == "IS":
        stripped = raw.strip()
        # Plain integers only; pydicom decides about '12.0', several values, garbage.
        return stripped if stripped.lstrip("+-").isdigit() or not stripped else None
    if "\\" in raw:
        return "\\".join(item.strip() for item in raw.split("\\")).strip()
    return raw.strip()
