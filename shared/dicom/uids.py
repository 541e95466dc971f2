"""Our DICOM UID root and the helpers every producer of UIDs (the SR builder, tests) uses.

Anything carrying a SOP Instance UID under `MEDREGA_UID_ROOT` was made by us; the listener uses
that to recognise our own SR coming back from the PACS and never drafts it again.
"""

from __future__ import annotations

import re

from pydicom.uid import generate_uid

MEDREGA_UID_ROOT = "1.2.826.0.1.3680043.8.498.7781."

# DICOM PS3.5 §9.1: digits and dots, components without leading zeros, at most 64 characters.
_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_own_uid(uid: str) -> bool:
    """True when `uid` was generated under our root (e.g. our SR's SOP Instance UID)."""
    return uid.startswith(MEDREGA_UID_ROOT)


def derived_uid(*parts: str) -> str:
    """A UID under our root that is the same for the same `parts` (e.g. report id, version).

    Deterministic so a retried delivery re-sends the same SOP Instance UID (idempotent receivers).
    """
    if not parts:
        raise ValueError("derived_uid needs at least one part; use new_uid() for a random UID")
    return str(generate_uid(prefix=MEDREGA_UID_ROOT, entropy_srcs=[str(p) for p in parts]))


def new_uid() -> str:
    """A fresh random UID under our root."""
    return str(generate_uid(prefix=MEDREGA_UID_ROOT))


def is_valid_uid(uid: str) -> bool:
    """Syntactically valid DICOM UID (safe to use as a file or directory name)."""
    return 0 < len(uid) <= 64 and _UID_PATTERN.match(uid) is not None
