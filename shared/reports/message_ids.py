"""Identifiers of outgoing messages, derived from (report id, version) — never random.

A retried or re-published delivery re-sends the same SR, GSPS and KOS SOP Instance UIDs and the
same HL7 message control ID, so idempotent receivers (the PACS, the RIS) keep one copy per
version, and the delivery row names exactly what the receiver got. Pure: no highdicom, no database.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from shared.dicom.uids import derived_uid

MAX_CONTROL_ID_LENGTH = 20  # HL7 ST in MSH-10
_KIND = re.compile(r"^[A-Za-z]{1,8}$")


@dataclass(frozen=True)
class SrUids:
    series_instance_uid: str
    sop_instance_uid: str


def sr_uids(report_id: str | int, version: int) -> SrUids:
    """The SR's series and SOP Instance UIDs for one report version (same inputs, same UIDs).
    Also how a later version names its predecessor SR without having kept the old dataset."""
    return SrUids(
        series_instance_uid=derived_uid("medrega-sr-series", str(report_id), str(version)),
        sop_instance_uid=derived_uid("medrega-sr-instance", str(report_id), str(version)),
    )


def gsps_uids(report_id: str | int, version: int, image_sop_instance_uid: str) -> SrUids:
    """The Grayscale Softcopy Presentation State of one key image of one report version: one
    series per version (the delivery's message ID), one instance per key image."""
    return SrUids(
        series_instance_uid=gsps_series_uid(report_id, version),
        sop_instance_uid=derived_uid(
            "medrega-gsps-instance", str(report_id), str(version), image_sop_instance_uid
        ),
    )


def gsps_series_uid(report_id: str | int, version: int) -> str:
    """The series of a version's presentation states (the GSPS delivery's message ID)."""
    return derived_uid("medrega-gsps-series", str(report_id), str(version))


def kos_uids(report_id: str | int, version: int) -> SrUids:
    """The Key Object Selection document of one report version."""
    return SrUids(
        series_instance_uid=derived_uid("medrega-kos-series", str(report_id), str(version)),
        sop_instance_uid=derived_uid("medrega-kos-instance", str(report_id), str(version)),
    )


def hl7_control_id(report_id: int, version: int, kind: str = "ORU") -> str:
    """MSH-10: `{KIND}{report_id}V{version}` (e.g. `ORU42V3`), or — only when that would exceed
    20 characters — `X-` + 18 base32 characters of a SHA-256 over the same triple. The two forms
    cannot collide: the readable one never contains '-'."""
    if report_id < 0 or version < 0:
        raise ValueError("report id and version must be non-negative")
    if not _KIND.match(kind):
        raise ValueError(f"kind must be 1-8 letters, got {kind!r}")
    readable = f"{kind.upper()}{report_id}V{version}"
    if len(readable) <= MAX_CONTROL_ID_LENGTH:
        return readable
    digest = hashlib.sha256(f"{report_id}:{version}:{kind.upper()}".encode()).digest()
    return "X-" + base64.b32encode(digest).decode("ascii")[:18]


def fhir_message_id(report_id: str | int, version: int) -> str:
    """The FHIR delivery's message ID: which version of which report was PUT (the resource's
    own identity is the study's, so every version updates the same DiagnosticReport)."""
    return f"DiagnosticReport-{report_id}-v{version}"
