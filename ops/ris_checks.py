"""What a RIS's interface engine checks before it takes an ORU, for the stand-in RIS.

A real engine routes on MSH-5/6 (is this message for me?), trusts MSH-3/4 only from the senders
it was set up for, matches the patient in the identifier domain named by PID-3.4 and the order by
its procedure code (OBR-4). Any mismatch is refused with a negative ACK that names the field:

- MSH-3..6 (the envelope): `AR`, application reject: the message is not for this receiver or not
  from a sender it knows, and sending it again unchanged never helps;
- PID-3.4 or OBR-4 (the content): `AE`, application error: the message was read but cannot be
  filed.

The ACK text names the field, what came and what was expected; never the patient's ID or name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from shared.hl7.er7 import Er7Message

NakCode = Literal["AE", "AR"]


@dataclass(frozen=True)
class RisExpectations:
    """Expected values as they appear in the message (ER7, components joined by `^`); None: not
    checked. `procedure_codes`: accepted OBR-4 `code^coding system` pairs (empty: any)."""

    sending_application: str | None = None  # MSH-3
    sending_facility: str | None = None  # MSH-4
    receiving_application: str | None = None  # MSH-5
    receiving_facility: str | None = None  # MSH-6
    patient_id_authority: str | None = None  # PID-3.4, sub-components joined by `&`
    procedure_codes: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Mismatch:
    code: NakCode
    text: str


def _raw_field(message: Er7Message, segment: str, number: int) -> str:
    """A whole field as sent (all components), '' when absent."""
    fields = message.segment(segment)
    if fields is None:
        return ""
    return fields[number] if number < len(fields) else ""  # er7 numbers MSH as HL7 does


def _first_repetition_component(value: str, component: int) -> str:
    parts = value.split("~", 1)[0].split("^")
    return parts[component - 1] if len(parts) >= component else ""


def check_message(message: Er7Message, expect: RisExpectations) -> Mismatch | None:
    """The first mismatch, envelope before content; None when everything checked matches."""
    envelope = (
        ("MSH-3", 3, expect.sending_application),
        ("MSH-4", 4, expect.sending_facility),
        ("MSH-5", 5, expect.receiving_application),
        ("MSH-6", 6, expect.receiving_facility),
    )
    for name, number, wanted in envelope:
        got = _raw_field(message, "MSH", number)
        if wanted is not None and got != wanted:
            return Mismatch("AR", f"{name} is {got!r}, this RIS expects {wanted!r}")
    if expect.patient_id_authority is not None:
        authority = _first_repetition_component(_raw_field(message, "PID", 3), 4)
        if authority != expect.patient_id_authority:
            return Mismatch(
                "AE",
                f"PID-3.4 assigning authority is {authority!r}, this RIS files patients under "
                f"{expect.patient_id_authority!r}",
            )
    if expect.procedure_codes:
        obr4 = _raw_field(message, "OBR", 4)
        code = "^".join(
            (_first_repetition_component(obr4, 1), _first_repetition_component(obr4, 3))
        )
        if code not in expect.procedure_codes:
            known = ", ".join(sorted(expect.procedure_codes))
            return Mismatch("AE", f"OBR-4 procedure {code!r} is not one this RIS orders ({known})")
    return None
