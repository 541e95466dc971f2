"""The C-STORE-RQ command set read with `struct`, and the request assembled from its P-DATA.

pynetdicom decodes every received command set into a pydicom Dataset, converts it element by
element into a `DIMSEMessage` and then copies each element onto the request primitive (~10 % of
the listener's Python time per instance under the ingest bench, py-spy --gil). A C-STORE-RQ's
command set has a fixed shape (PS3.7 §9.3.1.1); this reads the common form — the elements below,
each of its standard length — and builds the same `C_STORE` primitive through the primitive's
own setters. Anything else (other elements, other commands, a command split over several
fragments, odd lengths) is left to pynetdicom, which also decides what is invalid.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from io import BytesIO

from pydicom.uid import UID
from pynetdicom.dimse_primitives import C_STORE

C_STORE_RQ = 0x0001
NO_DATA_SET = 0x0101

_ELEMENT_HEADER = struct.Struct("<HHI")
_US = struct.Struct("<H")
_UL = struct.Struct("<I")

GROUP_LENGTH = 0x0000
AFFECTED_SOP_CLASS_UID = 0x0002
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
PRIORITY = 0x0700
COMMAND_DATA_SET_TYPE = 0x0800
AFFECTED_SOP_INSTANCE_UID = 0x1000
# element -> value length (None: a UID, even length up to 64)
_READ = {
    GROUP_LENGTH: 4,
    AFFECTED_SOP_CLASS_UID: None,
    COMMAND_FIELD: 2,
    MESSAGE_ID: 2,
    PRIORITY: 2,
    COMMAND_DATA_SET_TYPE: 2,
    AFFECTED_SOP_INSTANCE_UID: None,
}
_REQUIRED = frozenset(_READ)


@dataclass(frozen=True, slots=True)
class StoreCommand:
    message_id: int
    priority: int
    sop_class_uid: str
    sop_instance_uid: str


def read_store_command(encoded: bytes | memoryview) -> StoreCommand | None:
    """The C-STORE-RQ (with a data set) in this Implicit VR Little Endian command set, or None
    for anything this does not read with certainty."""
    values: dict[int, int | str] = {}
    offset = 0
    previous = -1
    try:
        while offset < len(encoded):
            group, element, length = _ELEMENT_HEADER.unpack_from(encoded, offset)
            offset += 8
            if group != 0x0000 or element <= previous or element not in _READ:
                return None
            previous = element
            expected = _READ[element]
            value = bytes(encoded[offset : offset + length])
            offset += length
            if len(value) != length:
                return None
            if expected is None:
                if length > 64 or length % 2 or not value.isascii():
                    return None
                text = value.decode("ascii").rstrip("\x00 ")
                if not text or not all(c.isdigit() or c == "." for c in text):
                    return None
                values[element] = text
            elif length != expected:
                return None
            else:
                values[element] = (_US if length == 2 else _UL).unpack(value)[0]
    except struct.error:
        return None
    if set(values) != _REQUIRED:
        return None
    if values[GROUP_LENGTH] != len(encoded) - 12:  # everything after the group length element
        return None
    if values[COMMAND_FIELD] != C_STORE_RQ or values[COMMAND_DATA_SET_TYPE] == NO_DATA_SET:
        return None
    if values[PRIORITY] not in (0, 1, 2):
        return None
    return StoreCommand(
        message_id=int(values[MESSAGE_ID]),
        priority=int(values[PRIORITY]),
        sop_class_uid=str(values[AFFECTED_SOP_CLASS_UID]),
        sop_instance_uid=str(values[AFFECTED_SOP_INSTANCE_UID]),
    )


@dataclass(slots=True)
class StoreRequestInProgress:
    """A C-STORE-RQ whose command has been read, collecting its data set fragments."""

    context_id: int
    command: StoreCommand
    data_set: BytesIO = field(default_factory=BytesIO)

    def primitive(self) -> C_STORE:
        """The request as pynetdicom's `message_to_primitive` builds it."""
        request = C_STORE()
        request.MessageID = self.command.message_id
        request.AffectedSOPClassUID = UID(self.command.sop_class_uid)
        request.AffectedSOPInstanceUID = UID(self.command.sop_instance_uid)
        request.Priority = self.command.priority
        request.DataSet = self.data_set
        request._context_id = self.context_id
        request._dataset_path = None
        request._dataset_file = None
        return request
