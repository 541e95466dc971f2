"""A struct-based walk over a Part 10 file's elements, up to the pixel data, keeping the raw
bytes of the few the listener indexes.

`dcmread(stop_before_pixels=True)` builds a Dataset of every element before the pixels and was
~14 % of the listener's Python time per instance under the ingest bench (py-spy --gil); this walk
does the part of that work the index needs. It only ever answers for inputs it reads in full
and without doubt: little-endian syntaxes (implicit, explicit, encapsulated), elements in
ascending order, every length inside the bytes, sequences it can walk to their end. For anything
else it answers None and the caller lets pydicom decide (its error classification included), so
its answers are pydicom's by construction where it gives one (tests compare both on many inputs).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR

PREAMBLE_LENGTH = 128
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
# Syntaxes whose dataset is not explicit VR little endian, or is compressed as a whole.
NOT_LITTLE_ENDIAN_DATASET = frozenset(
    {
        "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
        "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
        "1.2.840.10008.1.2.8.1",  # Deflated Image Frame Compression (dataset is explicit LE,
        # but it is new enough that pydicom's own reading is the reference)
    }
)
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 §7.1.2).
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})  # fmt: skip
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
# pydicom's stop_before_pixels stops at any of these (Float/Double Float/Pixel Data), and only
# at these: an element with a higher tag before them is read (and must be whole).
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
# Every VR of PS3.5 §6.2; anything else in an explicit syntax is left to pydicom.
KNOWN_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV"})  # fmt: skip
# Sequences nested deeper than this are left to pydicom (no real header nests this far).
MAX_DEPTH = 16
# The code items' elements read from the procedure code sequences.
CODE_ELEMENTS = frozenset({0x00080100, 0x00080102, 0x00080104})

_TAG = struct.Struct("<HH")
_EXPLICIT_SHORT = struct.Struct("<HH2sH")
_EXPLICIT_LONG = struct.Struct("<HH2s2xI")
_IMPLICIT = struct.Struct("<HHI")


class _Unsure(Exception):
    """Something this walk does not read with certainty: pydicom decides."""


@dataclass(slots=True)
class ScannedHeader:
    transfer_syntax_uid: str
    implicit_vr: bool
    # tag -> (explicit VR or None when implicit, value bytes) for the wanted top-level tags.
    elements: dict[int, tuple[bytes | None, bytes]] = field(default_factory=dict)
    # sequence tag -> its items, each {tag: (VR, bytes)} of CODE_ELEMENTS.
    sequences: dict[int, list[dict[int, tuple[bytes | None, bytes]]]] = field(default_factory=dict)


def scan(data: bytes, wanted: frozenset[int], sequences: frozenset[int]) -> ScannedHeader | None:
    """The raw `wanted` top-level elements and the code items of `sequences`, or None."""
    try:
        return _scan(memoryview(data), wanted, sequences)
    except (_Unsure, struct.error, UnicodeDecodeError, RecursionError):
        return None


def _scan(
    data: memoryview, wanted: frozenset[int], sequences: frozenset[int]
) -> ScannedHeader | None:
    if (
        len(data) < PREAMBLE_LENGTH + 4
        or bytes(data[PREAMBLE_LENGTH : PREAMBLE_LENGTH + 4]) != b"DICM"
    ):
        return None
    offset = PREAMBLE_LENGTH + 4
    syntax: str | None = None
    # File Meta Information: explicit VR little endian, group 0002.
    while offset + 8 <= len(data):
        group, element = _TAG.unpack_from(data, offset)
        if group != 0x0002:
            break
        vr, length, value_offset = _explicit_header(data, offset)
        end = _value_end(data, value_offset, length)
        if element == 0x0010:
            syntax = bytes(data[value_offset:end]).decode("ascii").rstrip("\x00 ")
        offset = end
    if syntax is None or syntax in NOT_LITTLE_ENDIAN_DATASET:
        return None
    implicit = syntax == IMPLICIT_VR_LITTLE_ENDIAN
    scanned = ScannedHeader(transfer_syntax_uid=syntax, implicit_vr=implicit)
    previous = -1
    while offset < len(data):
        if offset + 8 > len(data):
            raise _Unsure  # a partial element header
        group, element = _TAG.unpack_from(data, offset)
        tag = group << 16 | element
        if implicit and previous == -1:
            _check_looks_implicit(data, offset)
        if tag in PIXEL_TAGS:
            # pydicom reads the pixel element's header (VR and length) before it stops: a file
            # cut inside that header is undecodable to it, so it must be whole here too.
            _, _, value_offset = _element_header(data, offset, implicit)
            if value_offset > len(data):
                raise _Unsure
            break
        if tag <= previous or group in (0x0000, 0x0002, 0xFFFE):
            # Out of order; a command or meta group in the dataset (pydicom reads those its own
            # way and guesses the encoding again after them); a stray delimiter.
            raise _Unsure
        previous = tag
        vr, length, value_offset = _element_header(data, offset, implicit)
        if length == UNDEFINED_LENGTH:
            _check_walkable_sequence(vr, implicit, tag)
            items, offset = _walk_undefined_sequence(
                data, value_offset, implicit, tag in sequences, depth=1
            )
            if tag in sequences:
                scanned.sequences[tag] = items
            continue
        end = _value_end(data, value_offset, length)
        if tag in sequences:
            if not implicit and vr != b"SQ":
                raise _Unsure
            scanned.sequences[tag] = _walk_defined_items(data, value_offset, end, implicit, 1)
        elif tag in wanted:
            scanned.elements[tag] = (vr, bytes(data[value_offset:end]))
        offset = end
    return scanned


def _explicit_header(data: memoryview, offset: int) -> tuple[bytes | None, int, int]:
    group, element, vr, length = _EXPLICIT_SHORT.unpack_from(data, offset)
    if vr not in KNOWN_VRS:
        raise _Unsure  # not a VR: implicit VR inside an explicit syntax, or garbage
    if vr in LONG_VRS:
        _, _, _, length = _EXPLICIT_LONG.unpack_from(data, offset)
        return vr, length, offset + 12
    return vr, length, offset + 8


def _check_looks_implicit(data: memoryview, offset: int) -> None:
    """pydicom reads a dataset (or item) of an implicit syntax as explicit when its first
    element's bytes 4-5 are two capital letters: leave that guess to pydicom."""
    if offset + 6 <= len(data) and all(0x40 < b < 0x5B for b in data[offset + 4 : offset + 6]):
        raise _Unsure


def _implicit_header(data: memoryview, offset: int) -> tuple[bytes | None, int, int]:
    _, _, length = _IMPLICIT.unpack_from(data, offset)
    return None, length, offset + 8


def _value_end(data: memoryview, value_offset: int, length: int) -> int:
    end = value_offset + length
    if end > len(data):
        raise _Unsure  # truncated: pydicom calls it undecodable or reads it its way
    return end


def _item_header(data: memoryview, offset: int) -> tuple[int, int]:
    if offset + 8 > len(data):
        raise _Unsure
    group, element, length = _IMPLICIT.unpack_from(data, offset)
    return group << 16 | element, length


def _element_header(data: memoryview, offset: int, implicit: bool) -> tuple[bytes | None, int, int]:
    return _implicit_header(data, offset) if implicit else _explicit_header(data, offset)


def _check_walkable_sequence(vr: bytes | None, implicit: bool, tag: int) -> None:
    """An undefined-length element is walked only as a sequence we know to be one: not an
    undefined-length UN/OB, nor an implicit element that is no known sequence (pydicom reads it
    as one value up to a delimiter, or looks ahead): those are pydicom's business."""
    if vr != b"SQ" and not (implicit and _is_sequence_tag(tag)):
        raise _Unsure


def _is_sequence_tag(tag: int) -> bool:
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:  # private or unknown: pydicom guesses, we don't
        return False


def _walk_undefined_sequence(
    data: memoryview, offset: int, implicit: bool, keep: bool, depth: int
) -> tuple[list[dict[int, tuple[bytes | None, bytes]]], int]:
    """Items up to the sequence delimiter; the offset after it."""
    if depth > MAX_DEPTH:
        raise _Unsure
    items: list[dict[int, tuple[bytes | None, bytes]]] = []
    while True:
        tag, length = _item_header(data, offset)
        offset += 8
        if tag == SEQUENCE_DELIMITER:
            return items, offset
        item, offset = _walk_item_at(data, offset, tag, length, implicit, depth)
        if keep:
            items.append(item)


def _walk_defined_items(
    data: memoryview, offset: int, end: int, implicit: bool, depth: int
) -> list[dict[int, tuple[bytes | None, bytes]]]:
    items = []
    while offset < end:
        tag, length = _item_header(data, offset)
        offset += 8
        item, offset = _walk_item_at(data, offset, tag, length, implicit, depth)
        items.append(item)
    if offset != end:
        raise _Unsure
    return items


def _walk_item_at(
    data: memoryview, offset: int, tag: int, length: int, implicit: bool, depth: int
) -> tuple[dict[int, tuple[bytes | None, bytes]], int]:
    """The item whose header (`tag`, `length`) ends at `offset`."""
    if tag != ITEM:
        raise _Unsure
    end = None if length == UNDEFINED_LENGTH else _value_end(data, offset, length)
    return _walk_item(data, offset, end, implicit, depth)


def _walk_item(
    data: memoryview, offset: int, end: int | None, implicit: bool, depth: int
) -> tuple[dict[int, tuple[bytes | None, bytes]], int]:
    """One item's code elements; the offset after the item (after its delimiter when `end` is
    None). Nested sequences are walked through, not kept."""
    values: dict[int, tuple[bytes | None, bytes]] = {}
    previous = -1
    while True:
        if end is not None and offset >= end:
            if offset != end:
                raise _Unsure
            return values, offset
        if offset + 8 > len(data):
            raise _Unsure
        group, element = _TAG.unpack_from(data, offset)
        tag = group << 16 | element
        if tag == ITEM_DELIMITER and end is None:
            return values, offset + 8
        if tag <= previous or group == 0xFFFE:
            raise _Unsure
        if implicit and previous == -1:
            _check_looks_implicit(data, offset)
        previous = tag
        vr, length, value_offset = _element_header(data, offset, implicit)
        if length == UNDEFINED_LENGTH:
            _check_walkable_sequence(vr, implicit, tag)
            _, offset = _walk_undefined_sequence(
                data, value_offset, implicit, keep=False, depth=depth + 1
            )
            continue
        value_end = _value_end(data, value_offset, length)
        if end is not None and value_end > end:
            raise _Unsure
        if tag in CODE_ELEMENTS:
            values[tag] = (vr, bytes(data[value_offset:value_end]))
        offset = value_end
