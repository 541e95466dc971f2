"""The JSON log line: one object a line, the study's correlation id where one is bound (and in
the thread that bound it only), the traceback kept, the format chosen by configuration."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from shared.config import Settings
from shared.observability.correlation import study_context
from shared.observability.logs import log_format_from_env, make_handler


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = make_handler("listener", "json")
    handler.setStream(stream)  # type: ignore[attr-defined]
    logger = logging.getLogger("tests.observability.json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_carries_the_bound_study_and_nothing_else_does(logged) -> None:
    logger, stream = logged
    with study_context(42):
        logger.info("draft job %d stored", 7)
        worker = threading.Thread(target=lambda: logger.info("unrelated"))
        worker.start()
        worker.join()
    logger.info("after")
    first, unrelated, after = _lines(stream)
    assert first["message"] == "draft job 7 stored"
    assert first["correlation_id"] == "study-42"
    assert first["service"] == "listener" and first["level"] == "INFO"
    assert first["logger"] == "tests.observability.json" and isinstance(first["pid"], int)
    assert str(first["ts"]).endswith("+00:00")
    assert "correlation_id" not in unrelated and "correlation_id" not in after


def test_one_record_stays_one_line_with_its_traceback(logged) -> None:
    logger, stream = logged
    try:
        raise ValueError("bad value\nsecond line")
    except ValueError:
        logger.exception("forged\nINFO looks like another record")
    (line,) = _lines(stream)  # exactly one line: the newlines are escaped inside the JSON
    assert line["message"] == "forged\nINFO looks like another record"
    assert "ValueError: bad value" in str(line["exc"])


def test_the_format_follows_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(log_format=None, environment="development").effective_log_format == "text"
    assert Settings(log_format="json").effective_log_format == "json"
    monkeypatch.delenv("MEDREGA_LOG_FORMAT", raising=False)
    monkeypatch.setenv("MEDREGA_ENVIRONMENT", "production")
    assert log_format_from_env() == "json"
    monkeypatch.setenv("MEDREGA_LOG_FORMAT", "text")
    assert log_format_from_env() == "text"
    monkeypatch.setenv("MEDREGA_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="text or json"):
        log_format_from_env()
