"""shared/log_safety.py: a value from the network, or a message quoting one, stays on one line."""

from __future__ import annotations

import io
import logging

from shared.log_safety import EscapingFormatter, printable


def test_printable_escapes_line_breaks_controls_and_the_escape_character() -> None:
    assert printable("1.2.840.10008.1.1") == "1.2.840.10008.1.1"  # the common case: unchanged
    assert printable("STORESCU") == "STORESCU"
    assert printable("1.2\nERROR forged") == "1.2\\nERROR forged"
    assert printable("a\rb\x1b[2Jc\u2028d\x85e\x00") == "a\\rb\\x1b[2Jc\\u2028d\\x85e\\x00"
    # A literal backslash cannot pass for an escape: "\n" typed by a peer reads "\\n".
    assert printable("1.2\\n3") == "1.2\\\\n3"
    assert printable("王^小明") == "王^小明"  # printable text other than ASCII stays readable
    assert printable(b"AE\nX") == "AE\\nX"


def test_printable_bounds_what_a_peer_can_put_in_one_line() -> None:
    logged = printable("9" * 5000)
    assert logged.startswith("9" * 200) and logged.endswith("…(+4800 chars)")
    assert "\n" not in printable("x\n" * 5000)


def log_lines(message: str, *args: object, exc: BaseException | None = None) -> list[str]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EscapingFormatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("tests.log_safety")
    logger.addHandler(handler)
    try:
        if exc is None:
            logger.warning(message, *args)
        else:
            try:
                raise exc
            except BaseException:
                logger.exception(message, *args)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue().splitlines()


def test_formatter_keeps_a_third_party_message_on_one_line() -> None:
    (line,) = log_lines("Invalid value '%s'", "X\nERROR forged\r\u2028")
    assert line == "WARNING tests.log_safety: Invalid value 'X\\nERROR forged\\r\\u2028'"


def test_formatter_escapes_the_exception_lines_of_a_traceback_not_its_frames() -> None:
    cause = ValueError("cause\nERROR forged cause")
    error = RuntimeError("Invalid 'Calling AE Title' value 'X\nERROR forged'")
    error.__cause__ = cause
    lines = log_lines("decode failed", exc=error)
    assert lines[0] == "ERROR tests.log_safety: decode failed"
    assert not [line for line in lines if line.startswith("ERROR forged")]
    assert "RuntimeError: Invalid 'Calling AE Title' value 'X\\nERROR forged'" in lines
    assert "ValueError: cause\\nERROR forged cause" in lines
    assert any(line.startswith("Traceback (most recent call last):") for line in lines)
    assert any(line.startswith("  File ") for line in lines)  # frames as Python prints them
