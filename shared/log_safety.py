"""Values from the network, made safe to log: one record stays one line.

A peer chooses its AE title, the UIDs in its requests and everything in its datasets. Logged as
they are, a newline (or CR, or a Unicode line separator, or a terminal escape) in one of them
could start what looks like a second, forged log record. `printable(value)` escapes them the way
`repr` does (`\\n`, `\\x1b`, `\\u2028`), escapes the backslash itself so an escape can't be faked
either, and bounds the length. `EscapingFormatter` applies the same rule to whole messages, for
third-party loggers (pynetdicom quotes invalid UIDs and AE titles it receives) whose calls we
don't control. Neither makes a value fit to log: PHI stays out of logs regardless.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

# Longer than any DICOM UID (64) or AE title (16); a peer cannot flood a log line either.
MAX_LOGGED_CHARS = 200


def _escape_char(char: str) -> str:
    if char == "\\":
        return "\\\\"
    if char.isprintable():
        return char
    return repr(char)[1:-1]  # '\n' -> \n, '\x1b' -> \x1b, '\u2028' -> \u2028


def printable(value: object, max_chars: int = MAX_LOGGED_CHARS) -> str:
    """`value` as one line of printable text: control and line-separator characters escaped."""
    text = value.decode("ascii", "backslashreplace") if isinstance(value, bytes) else str(value)
    if len(text) > max_chars:
        text = f"{text[:max_chars]}…(+{len(text) - max_chars} chars)"
    if text.isprintable() and "\\" not in text:
        return text  # the common case (a UID, an AE title): no copy
    return "".join(_escape_char(char) for char in text)


class EscapingFormatter(logging.Formatter):
    """A formatter whose message is always one line, and whose traceback's exception lines are
    too (pynetdicom raises ValueError quoting the peer's AE title, then logs it with the
    traceback). The traceback's own frames stay as Python prints them."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _one_line(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info:  # another handler may have cached its own, unescaped rendering
            record.exc_text = self.formatException(record.exc_info)
        return super().format(record)

    def formatException(self, ei: Any) -> str:
        text = super().formatException(ei)
        exception, seen = ei[1], set()
        while exception is not None and id(exception) not in seen:  # the chain, as printed
            seen.add(id(exception))
            only = "".join(traceback.format_exception_only(type(exception), exception))
            only = only.rstrip("\n")
            if not only.isprintable():
                text = text.replace(only, _one_line(only))
            exception = exception.__cause__ or exception.__context__
        return text


def _one_line(message: str) -> str:
    if message.isprintable():
        return message
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in message)
