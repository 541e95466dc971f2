"""A small, forgiving ER7 reader for the few fields an ACK or the RIS sink needs.

hl7apy's parser wants a message that matches its reference for the declared version; an ACK
from a real RIS may be v2.3 or carry vendor segments, and we still must read MSA-1/MSA-2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.hl7.escape import unescape


class Er7Error(ValueError):
    """Not an ER7 HL7 message (no MSH, bad encoding characters)."""


@dataclass(frozen=True)
class Er7Message:
    segments: tuple[tuple[str, ...], ...]  # each segment's fields; [0] is the segment name
    component_sep: str
    repetition_sep: str

    def segment(self, name: str) -> tuple[str, ...] | None:
        return next((s for s in self.segments if s[0] == name), None)

    def field(self, segment: str, number: int, component: int = 1) -> str:
        """Unescaped value of `segment`-`number` (first repetition), component `component`.

        Numbers follow HL7 (MSH-9 is MSH's ninth field, counting MSH-1, the field separator)."""
        fields = self.segment(segment)
        if fields is None or number >= len(fields):
            return ""
        value = fields[number]
        if segment != "MSH" or number > 2:  # MSH-1/MSH-2 hold the delimiters themselves
            value = value.split(self.repetition_sep, 1)[0]
        first_repetition = value
        components = first_repetition.split(self.component_sep)
        return unescape(components[component - 1]) if component <= len(components) else ""


_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")


def read_er7(text: str) -> Er7Message:
    """Split an ER7 message into segments and fields. Accepts \\r, \\n or \\r\\n separators."""
    lines = [line for line in re.split(r"\r\n|\r|\n", text.strip()) if line]
    if not lines or not lines[0].startswith("MSH") or len(lines[0]) < 8:
        raise Er7Error("message does not start with an MSH segment")
    field_sep = lines[0][3]
    encoding = lines[0][4:8]
    if field_sep.isalnum() or len(set(field_sep + encoding)) != 5:
        raise Er7Error("invalid MSH encoding characters")
    segments: list[tuple[str, ...]] = []
    for line in lines:
        fields = line.split(field_sep)
        if not _SEGMENT_NAME.match(fields[0]):
            raise Er7Error("invalid segment name")
        if fields[0] == "MSH":
            # Number MSH like HL7 does: MSH-1 is the separator itself, MSH-2 the encoding chars.
            fields = ["MSH", field_sep, *fields[1:]]
        segments.append(tuple(fields))
    return Er7Message(
        segments=tuple(segments), component_sep=encoding[0], repetition_sep=encoding[1]
    )
