"""HL7 v2 escaping of free text (report sentences, names, identifiers).

We escape ourselves instead of relying on hl7apy: hl7apy leaves a backslash alone when it already
looks like an escape sequence (`\\F\\`), so report text that happens to contain `\\F\\` would come
back as `|`. Our output only ever contains the five standard sequences, which hl7apy passes
through untouched, so every character survives build → wire → parse.
"""

from __future__ import annotations

import re

# HL7 v2.5.1 §2.7: the default delimiters and their escape sequences (escape character first).
_ESCAPES = {
    "\\": "\\E\\",
    "|": "\\F\\",
    "^": "\\S\\",
    "&": "\\T\\",
    "~": "\\R\\",
}
_UNESCAPES = {"E": "\\", "F": "|", "S": "^", "T": "&", "R": "~", ".br": "\n"}
_SEQUENCE = re.compile(r"\\([^\\]*)\\")
# C0/C1 controls (and DEL) would break segment or MLLP framing (\r, 0x0B, 0x1C) or are
# meaningless in a report line; a tab is harmless and kept.
_CONTROL = re.compile(r"\r\n|[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def single_line(text: str) -> str:
    """Replace line breaks and control characters by spaces.

    Each report sentence travels as one OBX row (TX), so a line break inside a sentence has no
    place in it; a space keeps the words apart.
    """
    return _CONTROL.sub(" ", text)


def escape(text: str) -> str:
    """Text → ER7 leaf value: delimiters escaped, controls flattened (see `single_line`)."""
    return "".join(_ESCAPES.get(ch, ch) for ch in single_line(text))


def unescape(value: str) -> str:
    """ER7 leaf value → text. Understands the delimiter escapes, `\\.br\\`, `\\Xhh…\\` (UTF-8 hex)
    and drops highlighting (`\\H\\`, `\\N\\`); anything else is left as it was."""

    def replace(match: re.Match[str]) -> str:
        body = match.group(1)
        if body in _UNESCAPES:
            return _UNESCAPES[body]
        if body in ("H", "N"):
            return ""
        if body.startswith("X") and len(body) % 2 == 1 and len(body) > 1:
            try:
                return bytes.fromhex(body[1:]).decode("utf-8")
            except ValueError:
                return match.group(0)
        return match.group(0)

    return _SEQUENCE.sub(replace, value)
