"""DICOM Person Name (PN) ↔ HL7 XPN.

DICOM PN: up to three component groups separated by `=` — alphabetic, ideographic, phonetic —
each `family^given^middle^prefix^suffix` (e.g. `Wang^Xiaoming=王^小明`).
HL7 XPN has exactly the slot for that: one PID-5 repetition per group, told apart by XPN-8
Name Representation Code (table 4000: A alphabetic, I ideographic, P phonetic). XPN-7 is `L`
(legal name). Note the order difference: XPN puts suffix (4) before prefix (5).
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.hl7.escape import escape, unescape

REPRESENTATIONS = ("A", "I", "P")  # DICOM group order → XPN-8
LEGAL_NAME = "L"
UNSPECIFIED_NAME = "U"


def _pn_components(group: str) -> list[str]:
    parts = group.split("^")[:5]
    return parts + [""] * (5 - len(parts))


def dicom_pn_to_xpn(pn: str | None) -> list[str]:
    """ER7 XPN repetitions (already escaped), one per non-empty PN group of each name.

    A multi-valued PN (names separated by DICOM's `\\`) gives the repetitions of every name in
    turn, so no name ends up inside another's components. An empty name still yields one
    repetition with name type `U` (unspecified): PID-5 is required, and an empty-but-typed name
    says "unknown" rather than dropping the field.
    """
    repetitions: list[str] = []
    for name in (pn or "").split("\\"):
        for group, representation in zip(name.split("=")[:3], REPRESENTATIONS, strict=False):
            family, given, middle, prefix, suffix = (c.strip() for c in _pn_components(group))
            if not any((family, given, middle, prefix, suffix)):
                continue
            xpn = [escape(family), escape(given), escape(middle), escape(suffix), escape(prefix)]
            repetitions.append("^".join([*xpn, "", LEGAL_NAME, representation]))
    return repetitions or [f"^^^^^^{UNSPECIFIED_NAME}"]


def xpn_to_dicom_pn(repetitions: Sequence[Sequence[str]]) -> str:
    """Rebuild a DICOM PN from parsed XPN repetitions (lists of ER7 component values, escaped).

    A repetition without XPN-8 is taken as alphabetic. Trailing empty components and groups are
    dropped, as DICOM recommends, so `Wang^Xiaoming=王^小明` comes back exactly.
    """
    groups = {"A": "", "I": "", "P": ""}
    for components in repetitions:
        values = [unescape(c) for c in components] + [""] * 8
        representation = values[7] or "A"
        if representation not in groups or groups[representation]:
            continue
        family, given, middle, suffix, prefix = values[:5]
        groups[representation] = "^".join([family, given, middle, prefix, suffix]).rstrip("^")
    return "=".join(groups[r] for r in REPRESENTATIONS).rstrip("=")


def display_name(pn: str | None) -> str:
    """`Family^Given` of the first non-empty group, for single-valued HL7 name slots (XCN/CNN)."""
    for group in (pn or "").split("\\")[0].split("="):
        family, given, *_ = _pn_components(group)
        if family or given:
            return "^".join((family, given)).rstrip("^")
    return ""
