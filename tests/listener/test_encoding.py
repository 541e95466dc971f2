"""The listener's struct-packed File Meta Information and C-STORE-RSP (services/listener/
encoding.py) are byte for byte what pynetdicom encodes through pydicom."""

from __future__ import annotations

import pytest
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, JPEGLSLossless, RLELossless
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, encode, encode_file_meta

from services.listener import handlers
from services.listener.encoding import c_store_rsp_command, part10_header

EVEN_UID = "1.2.826.0.1.3680043.8.498.99.12"  # 32 characters
ODD_UID = "1.2.826.0.1.3680043.8.498.99.123"  # 33 characters
SOP_CLASSES = [CTImageStorage, "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"]


@pytest.mark.parametrize("sop_class", SOP_CLASSES)
@pytest.mark.parametrize("instance", [EVEN_UID, ODD_UID])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless, JPEGLSLossless])
def test_file_meta_matches_pynetdicom(sop_class: str, instance: str, syntax: str) -> None:
    meta = create_file_meta(
        sop_class_uid=UID(sop_class), sop_instance_uid=UID(instance), transfer_syntax=UID(syntax)
    )
    expected = b"\x00" * 128 + b"DICM" + encode_file_meta(meta)
    assert part10_header(sop_class, instance, syntax) == expected


STATUSES = [
    handlers.STATUS_SUCCESS,
    handlers.STATUS_OUT_OF_RESOURCES,
    handlers.STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
    handlers.STATUS_CANNOT_UNDERSTAND,
    handlers.STATUS_CANNOT_DECODE,
    handlers.STATUS_HANDLER_FAILED,
]


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("message_id", [1, 7, 65535])
@pytest.mark.parametrize("instance", [EVEN_UID, ODD_UID])
@pytest.mark.parametrize("sop_class", SOP_CLASSES)
def test_c_store_response_matches_pynetdicom(
    status: int, message_id: int, instance: str, sop_class: str
) -> None:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = message_id
    response.AffectedSOPClassUID = sop_class
    response.AffectedSOPInstanceUID = instance
    response.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(response)
    expected = encode(message.command_set, True, True)
    assert c_store_rsp_command(message_id, sop_class, instance, status) == expected
