"""Message control IDs (MSH-10) derived from the report version, so a re-send is recognisable.

The RIS de-duplicates on MSH-10; the same (report id, version, kind) must always give the same
ID, and different ones different IDs. HL7 ST in MSH-10 is limited to 20 characters.

The readable form is the one `shared.message_ids.hl7_control_id` writes into
`deliveries.message_id` (`ORU12345V3`); this function agrees with it wherever that one works and
still gives a valid ID where it would exceed 20 characters.
"""

from __future__ import annotations

import base64
import hashlib
import re

MAX_CONTROL_ID_LENGTH = 20
_KIND = re.compile(r"^[A-Za-z]{1,8}$")


def message_control_id(report_id: int, version: int, kind: str = "ORU") -> str:
    """`{KIND}{report_id}V{version}` (e.g. `ORU42V3`), or — only when that would exceed 20
    characters — `X-` + 18 base32 characters of a SHA-256 over the same triple. The two forms
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
