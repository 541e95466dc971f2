"""Message control IDs (MSH-10) derived from the report version, so a re-send is recognisable.

The RIS de-duplicates on MSH-10; the same (report id, version, kind) must always give the same
ID, and different ones different IDs. HL7 ST in MSH-10 is limited to 20 characters.
"""

from __future__ import annotations

import base64
import hashlib
import re

MAX_CONTROL_ID_LENGTH = 20
_KIND = re.compile(r"^[A-Za-z0-9]{1,8}$")


def message_control_id(report_id: int, version: int, kind: str = "hl7") -> str:
    """`MR{report_id}V{version}{KIND}` (readable, e.g. `MR42V3HL7`), or — only when that would
    exceed 20 characters — `MX` + 18 base32 characters of a SHA-256 over the same triple. The two
    forms cannot collide: the readable one never starts with `MX`."""
    if report_id < 0 or version < 0:
        raise ValueError("report id and version must be non-negative")
    if not _KIND.match(kind):
        raise ValueError(f"kind must be 1-8 letters or digits, got {kind!r}")
    readable = f"MR{report_id}V{version}{kind.upper()}"
    if len(readable) <= MAX_CONTROL_ID_LENGTH:
        return readable
    digest = hashlib.sha256(f"{report_id}:{version}:{kind.lower()}".encode()).digest()
    return "MX" + base64.b32encode(digest).decode("ascii")[:18]
