"""The struct walk (services/listener/header_scan.py) reads a header as pydicom does, or leaves it
to pydicom: on well-formed files of every kind the listener meets, on the same files cut short
or with bytes overwritten, and on random bytes, `read_header` gives what
`read_header_with_pydicom` gives (the same values, or the same error)."""

from __future__ import annotations

import os
import struct
import warnings
from io import BytesIO

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from services.listener import dataset_header
from services.listener.dataset_header import (
    _PROCEDURE_SEQUENCE_TAGS,
    _SCANNED_TAGS,
    read_header,
    read_header_with_pydicom,
)
from services.listener.encoding import part10_header
from services.listener.header_scan import scan
from tests.listener.ct_files import TEST_UID_ROOT, ct_dataset
from tests.listener.test_header_values import variants

JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"  # encapsulated: the dataset is explicit VR LE


def _encoded(ds: Dataset, syntax: str) -> bytes:
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _outcome(reader: object, data: bytes) -> tuple[str, object]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return "ok", reader(data)  # type: ignore[operator]
    except Exception as exc:
        return type(exc).__name__, None


def _agree(data: bytes) -> None:
    assert _outcome(read_header, data) == _outcome(read_header_with_pydicom, data)


def test_the_walk_answers_for_plain_little_endian_files() -> None:
    ds = ct_dataset(TEST_UID_ROOT + "1", TEST_UID_ROOT + "2", TEST_UID_ROOT + "3", 4, size=8)
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "RPID9", "LN", "CT abdomen"
    nested = Dataset()
    nested.CodeValue, nested.CodingSchemeDesignator = "X", "99LOCAL"
    code.ModifierCodeSequence = Sequence([nested])  # walked through, not kept
    ds.RequestedProcedureCodeSequence = Sequence([code])
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        data = _encoded(ds, syntax)
        scanned = scan(data, _SCANNED_TAGS, _PROCEDURE_SEQUENCE_TAGS)
        assert scanned is not None, syntax
        header = dataset_header._header_from_scan(scanned)
        assert header == read_header_with_pydicom(data)
        assert header.procedure_code == ("RPID9", "LN", "CT abdomen")


def test_every_header_variant_reads_the_same_both_ways() -> None:
    for _name, ds in variants():
        for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian):
            _agree(_encoded(ds, syntax))


def test_undefined_length_sequences_and_an_encapsulated_syntax() -> None:
    ds = ct_dataset(TEST_UID_ROOT + "4", TEST_UID_ROOT + "5", TEST_UID_ROOT + "6", 1, size=8)
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "P1", "LN"
    ds.ProcedureCodeSequence = Sequence([code])
    ds.ProcedureCodeSequence.is_undefined_length = True
    ds.ProcedureCodeSequence[0].is_undefined_length_sequence_item = True
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        data = _encoded(ds, syntax)
        assert scan(data, _SCANNED_TAGS, _PROCEDURE_SEQUENCE_TAGS) is not None
        _agree(data)
    # The dataset of an encapsulated syntax is explicit VR little endian (pixels left out).
    body = _encoded(ds, ExplicitVRLittleEndian)
    meta_end = 144 + int.from_bytes(body[140:144], "little")
    data = part10_header(ds.SOPClassUID, ds.SOPInstanceUID, JPEG_LOSSLESS_SV1)
    data += body[meta_end:].split(b"\xe0\x7f\x10\x00")[0]
    assert scan(data, _SCANNED_TAGS, _PROCEDURE_SEQUENCE_TAGS) is not None
    _agree(data)


def test_an_explicit_dataset_under_an_implicit_syntax() -> None:
    # A sender that mislabels its syntax: pydicom reads the elements as what they are.
    ds = ct_dataset(TEST_UID_ROOT + "4", TEST_UID_ROOT + "5", TEST_UID_ROOT + "6", 1, size=8)
    body = _encoded(ds, ExplicitVRLittleEndian)
    meta_end = 144 + int.from_bytes(body[140:144], "little")
    _agree(
        part10_header(ds.SOPClassUID, ds.SOPInstanceUID, ImplicitVRLittleEndian) + body[meta_end:]
    )


def test_random_bytes_behind_a_file_meta() -> None:
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        for _ in range(300):
            data = part10_header("1.2.840.10008.5.1.4.1.1.2", TEST_UID_ROOT + "9", syntax)
            _agree(data + os.urandom(int.from_bytes(os.urandom(2), "little") % 3000))


_TEXT = st.text(alphabet=st.sampled_from("ABCXYZabc019 ^=\\.-_'|~&Éé张山\x00\x1b"), max_size=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    syntax=st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
    patient_name=_TEXT,
    description=_TEXT,
    code_value=_TEXT,
    charset=st.sampled_from([None, "ISO_IR 100", "ISO_IR 192", "GB18030"]),
    with_code=st.booleans(),
    cut=st.one_of(st.none(), st.integers(min_value=0, max_value=2000)),
    overwrite=st.one_of(
        st.none(), st.tuples(st.integers(min_value=0, max_value=2000), st.binary(max_size=8))
    ),
)
@example(  # found by review: a cut inside the Pixel Data element's header
    syntax=ExplicitVRLittleEndian,
    patient_name="",
    description="",
    code_value="",
    charset=None,
    with_code=False,
    cut=860,
    overwrite=None,
)
def test_edited_and_damaged_files_read_the_same_both_ways(
    syntax: str,
    patient_name: str,
    description: str,
    code_value: str,
    charset: str | None,
    with_code: bool,
    cut: int | None,
    overwrite: tuple[int, bytes] | None,
) -> None:
    ds = ct_dataset(TEST_UID_ROOT + "7", TEST_UID_ROOT + "8", TEST_UID_ROOT + "9", 2, size=4)
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.PatientName = patient_name
    ds.StudyDescription = description
    if with_code:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator = code_value, "LN"
        ds.RequestedProcedureCodeSequence = Sequence([code])
    try:
        data = _encoded(ds, syntax)
    except (UnicodeError, ValueError, LookupError):
        return  # a value pydicom cannot write in that character set: not an input
    if overwrite is not None:
        at, patch = overwrite
        at = 132 + at % max(1, len(data) - 132)
        data = data[:at] + patch + data[at + len(patch) :]
    if cut is not None:
        data = data[: 132 + cut]
    _agree(data)


# --- hand-built inputs, one per guard of the walk (found by review; random search missed them) --

_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
_SOP_INSTANCE = TEST_UID_ROOT + "99.3"


def _imp(group: int, element: int, value: bytes, length: int | None = None) -> bytes:
    return struct.pack("<HHI", group, element, len(value) if length is None else length) + value


def _ui(uid: str) -> bytes:
    raw = uid.encode()
    return raw + (b"\0" if len(raw) % 2 else b"")


def _implicit_file(body: bytes) -> bytes:
    uids = _imp(0x0008, 0x0016, _ui(_SOP_CLASS)) + _imp(0x0008, 0x0018, _ui(_SOP_INSTANCE))
    tail = _imp(0x0020, 0x000D, _ui(TEST_UID_ROOT + "1")) + _imp(
        0x0020, 0x000E, _ui(TEST_UID_ROOT + "2")
    )
    return part10_header(_SOP_CLASS, _SOP_INSTANCE, ImplicitVRLittleEndian) + uids + body + tail


def test_a_file_cut_inside_the_pixel_data_header_is_pydicoms_to_refuse() -> None:
    ds = ct_dataset(TEST_UID_ROOT + "4", TEST_UID_ROOT + "5", TEST_UID_ROOT + "6", 1, size=8)
    data = _encoded(ds, ExplicitVRLittleEndian)
    pixel_header = data.index(b"\xe0\x7f\x10\x00OW")
    for cut in range(pixel_header + 1, pixel_header + 12):  # inside the 12-byte element header
        _agree(data[:cut])
    assert scan(data[: pixel_header + 8], _SCANNED_TAGS, _PROCEDURE_SEQUENCE_TAGS) is None


@pytest.mark.parametrize("depth", [17, 600])
def test_deeply_nested_sequences_are_left_to_pydicom(depth: int) -> None:
    opening = _imp(0x0008, 0x1115, b"", 0xFFFFFFFF) + _imp(0xFFFE, 0xE000, b"", 0xFFFFFFFF)
    closing = _imp(0xFFFE, 0xE00D, b"") + _imp(0xFFFE, 0xE0DD, b"")
    data = _implicit_file(_imp(0x0008, 0x0060, b"CT") + opening * depth + closing * depth)
    assert scan(data, _SCANNED_TAGS, _PROCEDURE_SEQUENCE_TAGS) is None
    _agree(data)


def test_an_undefined_length_element_that_is_not_a_sequence_is_left_to_pydicom() -> None:
    # Modality (CS) with an undefined length, implicit VR: pydicom reads it up to a delimiter.
    item = _imp(0xFFFE, 0xE000, b"") + _imp(0xFFFE, 0xE0DD, b"")
    data = _implicit_file(_imp(0x0008, 0x0060, b"", 0xFFFFFFFF) + item)
    assert scan(data, _SCANNED_TAGS, _PROCEDURE_SEQUENCE_TAGS) is None
    _agree(data)


def test_a_command_group_in_the_dataset_is_left_to_pydicom() -> None:
    data = _implicit_file(_imp(0x0000, 0x0000, struct.pack("<I", 0)))
    data = data.replace(
        part10_header(_SOP_CLASS, _SOP_INSTANCE, ImplicitVRLittleEndian),
        part10_header(_SOP_CLASS, _SOP_INSTANCE, ImplicitVRLittleEndian)
        + _imp(0x0000, 0x0000, struct.pack("<I", 0)),
        1,
    )
    assert scan(data, _SCANNED_TAGS, _PROCEDURE_SEQUENCE_TAGS) is None
    _agree(data)


def test_a_multi_valued_code_value_reads_as_pydicom_reads_it() -> None:
    ds = ct_dataset(TEST_UID_ROOT + "7", TEST_UID_ROOT + "8", TEST_UID_ROOT + "9", 2, size=4)
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "A\\B", "LN"
    ds.RequestedProcedureCodeSequence = Sequence([code])
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        _agree(_encoded(ds, syntax))
