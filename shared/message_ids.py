"""Identifiers of outgoing messages, derived from (report id, version) — never random.

A retried or re-published delivery therefore re-sends the same SR SOP Instance UID and the same
HL7 message control ID, and idempotent receivers (the PACS, the RIS) keep one copy per version.
"""

from __future__ import annotations

from shared.dicom.sr_builder import sr_uids


def sr_sop_instance_uid(report_id: int, version: int) -> str:
    """The SR builder's own derivation, so the delivery row names the UID the PACS receives."""
    return sr_uids(report_id, version).sop_instance_uid


def hl7_control_id(report_id: int, version: int, kind: str = "ORU") -> str:
    """HL7 MSH-10 (ST, 20 characters at most): e.g. ORU12345V3."""
    control_id = f"{kind}{report_id}V{version}"
    if len(control_id) > 20:
        raise ValueError(f"control ID {control_id!r} exceeds HL7's 20 characters")
    return control_id
