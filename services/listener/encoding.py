"""The two fixed-shape encodings of every C-STORE the listener answers, written with `struct`.

pynetdicom builds both through pydicom Datasets: the File Meta Information written in front of
each received dataset (`Event.encoded_dataset(include_meta=True)`) and the C-STORE-RSP command
set (encoded twice: once to measure its group length). That was over half of a bare pynetdicom
SCP's Python time per instance (py-spy --gil). These produce the same bytes (tests compare them
with pynetdicom's own encoding), for the elements pynetdicom writes and nothing else.
"""

from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

PREAMBLE = b"\x00" * 128 + b"DICM"


def _even(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def _explicit_short(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _explicit_ui(element: int, uid: str) -> bytes:
    return _explicit_short(0x0002, element, b"UI", _even(uid.encode("ascii"), b"\x00"))


# (0002,0001) File Meta Information Version, OB: 2-byte reserved field and a 4-byte length.
_META_VERSION = struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"
_META_IMPLEMENTATION = _explicit_ui(0x0012, PYNETDICOM_IMPLEMENTATION_UID) + _explicit_short(
    0x0002, 0x0013, b"SH", _even(PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii"), b" ")
)


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, 'DICM' and the File Meta Information pynetdicom writes for a received
    dataset (`pynetdicom.dsutils.create_file_meta` + `encode_file_meta`). UIDs are ASCII (the
    caller has them from a decoded request or an accepted context)."""
    elements = b"".join(
        (
            _META_VERSION,
            _explicit_ui(0x0002, sop_class_uid),
            _explicit_ui(0x0003, sop_instance_uid),
            _explicit_ui(0x0010, transfer_syntax_uid),
            _META_IMPLEMENTATION,
        )
    )
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(elements))
    return PREAMBLE + group_length + elements


def _implicit(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


C_STORE_RSP_COMMAND_FIELD = 0x8001
NO_DATA_SET = 0x0101


def c_store_rsp_command(
    message_id_being_responded_to: int, sop_class_uid: str, sop_instance_uid: str, status: int
) -> bytes:
    """The Implicit VR Little Endian command set of a C-STORE-RSP without the optional status
    elements (Error Comment, Offending Element), as pynetdicom encodes it."""
    elements = b"".join(
        (
            _implicit(0x0002, _even(sop_class_uid.encode("ascii"), b"\x00")),
            _implicit(0x0100, struct.pack("<H", C_STORE_RSP_COMMAND_FIELD)),
            _implicit(0x0120, struct.pack("<H", message_id_being_responded_to)),
            _implicit(0x0800, struct.pack("<H", NO_DATA_SET)),
            _implicit(0x0900, struct.pack("<H", status)),
            _implicit(0x1000, _even(sop_instance_uid.encode("ascii"), b"\x00")),
        )
    )
    return _implicit(0x0000, struct.pack("<I", len(elements))) + elements
