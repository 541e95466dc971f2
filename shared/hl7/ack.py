"""HL7 acknowledgements: reading the RIS's ACK (client side) and writing one (the RIS sink)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message

from shared.hl7.er7 import Er7Error, read_er7
from shared.hl7.escape import escape

ACCEPT_CODES = frozenset({"AA", "CA"})  # original mode / enhanced-mode commit accept
ERROR_CODES = frozenset({"AE", "CE"})
REJECT_CODES = frozenset({"AR", "CR"})
ACK_CODES = ACCEPT_CODES | ERROR_CODES | REJECT_CODES
HL7_VERSION = "2.5.1"

# HL7 table 0357 (message error condition codes) used by the sink's negative ACKs.
_ERROR_CONDITION = {
    "AE": ("207", "Application internal error"),
    "AR": ("200", "Unsupported message type"),
}


class MalformedAck(ValueError):
    """The answer is HL7-shaped but not a usable ACK (no MSA, unknown MSA-1)."""


@dataclass(frozen=True)
class Ack:
    code: str  # MSA-1
    control_id: str  # MSA-2: the control ID of the message being acknowledged
    text: str  # MSA-3 and ERR texts, joined; '' when none
    message_control_id: str  # the ACK's own MSH-10

    @property
    def accepted(self) -> bool:
        return self.code in ACCEPT_CODES


def parse_ack(text: str) -> Ack:
    try:
        message = read_er7(text)
    except Er7Error as exc:
        raise MalformedAck(str(exc)) from exc
    if message.segment("MSA") is None:
        raise MalformedAck("no MSA segment")
    code = message.field("MSA", 1).strip().upper()
    if code not in ACK_CODES:
        raise MalformedAck(f"unknown MSA-1 {code[:8]!r}")
    texts = [message.field("MSA", 3)]
    for segment in message.segments:
        if segment[0] == "ERR":
            # v2.5.1: ERR-3 code^text, ERR-7 diagnostics, ERR-8 user message; v2.3/2.4: ERR-1.
            texts += [message.field("ERR", 8), message.field("ERR", 7)]
            texts += [message.field("ERR", 3, 2) or message.field("ERR", 3, 1)]
            texts += [message.field("ERR", 1, 4)]
    unique = list(dict.fromkeys(t.strip() for t in texts if t.strip()))
    return Ack(
        code=code,
        control_id=message.field("MSA", 2).strip(),
        text="; ".join(unique),
        message_control_id=message.field("MSH", 10),
    )


def build_ack(
    code: str,
    acknowledged_control_id: str,
    *,
    text: str = "",
    sending_application: str = "RIS",
    receiving_application: str = "",
    trigger_event: str = "R01",
    now: datetime | None = None,
) -> str:
    """An ACK^<event> v2.5.1 (hl7apy, validated), with ERR for AE/AR. ER7, `\\r`-separated."""
    if code not in ACK_CODES:
        raise ValueError(f"unknown acknowledgement code {code!r}")
    ack = Message("ACK", version=HL7_VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    ack.msh.msh_3 = escape(sending_application)
    if receiving_application:
        ack.msh.msh_5 = escape(receiving_application)
    ack.msh.msh_7 = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S%z")
    ack.msh.msh_9 = f"ACK^{escape(trigger_event)}^ACK"
    ack.msh.msh_10 = escape(("A" + acknowledged_control_id)[:20]) or "A"
    ack.msh.msh_11 = "P"
    ack.msh.msh_18 = "UNICODE UTF-8"
    msa = ack.add_segment("MSA")
    msa.msa_1 = code
    msa.msa_2 = escape(acknowledged_control_id)
    if text:
        msa.msa_3 = escape(text)  # deprecated in 2.5.1 but what 2.3-era engines still read
    if code in _ERROR_CONDITION and code not in ACCEPT_CODES:
        condition, meaning = _ERROR_CONDITION[code]
        err = ack.add_segment("ERR")
        err.err_3 = f"{condition}^{meaning}^HL70357"
        err.err_4 = "E"
        if text:
            err.err_8 = escape(text)
    ack.validate()
    return ack.to_er7() + "\r"
