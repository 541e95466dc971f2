"""One logging set-up for every service: text (development) or JSON lines (production).

A JSON line is one object: `ts` (UTC, ISO 8601, milliseconds), `level`, `service`, `logger`,
`pid`, `message`, `correlation_id` when the line is about a study (`study-<row id>`,
shared.observability.correlation) and `exc` with the traceback when there is one. Log shippers
(Loki, Elasticsearch, journald → anything) index the fields without a parsing rule.

PHI stays out by what is logged, not by the formatter: every call site logs row ids, UIDs of
our own objects, states and counts, never names, patient IDs or accession numbers (the tests
check real runs for that). The formatter keeps one record on one line in both modes (JSON
escapes control characters; the text formatter is shared.log_safety.EscapingFormatter).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from shared.log_safety import EscapingFormatter
from shared.observability.correlation import current_correlation_id

if TYPE_CHECKING:
    from shared.config import Settings

LogFormat = Literal["text", "json"]
_OURS = "_medrega_handler"
DEFAULT_TEXT_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


def log_format_from_env() -> LogFormat:
    """MEDREGA_LOG_FORMAT, else JSON when MEDREGA_ENVIRONMENT is production (the rule of
    Settings.effective_log_format), for processes that run without the full settings (the
    model server on a GPU host, the stand-in RIS)."""
    chosen = os.environ.get("MEDREGA_LOG_FORMAT", "").strip().lower()
    if chosen in ("text", "json"):
        return "json" if chosen == "json" else "text"
    if chosen:
        raise ValueError(f"MEDREGA_LOG_FORMAT must be text or json, not {chosen!r}")
    return "json" if os.environ.get("MEDREGA_ENVIRONMENT") == "production" else "text"


class CorrelationFilter(logging.Filter):
    """Stamps each record with the correlation id bound in its thread/task (or None)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "correlation_id", None) is None:
            record.correlation_id = current_correlation_id()
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        correlation_id = getattr(record, "correlation_id", None)
        if correlation_id:
            line["correlation_id"] = correlation_id
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


def make_handler(
    service: str, log_format: LogFormat, text_format: str = DEFAULT_TEXT_FORMAT
) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter = (
        JsonFormatter(service) if log_format == "json" else EscapingFormatter(text_format)
    )
    handler.setFormatter(formatter)
    handler.addFilter(CorrelationFilter())
    return handler


def configure_logging(
    service: str,
    log_format: LogFormat,
    level: str | int = "INFO",
    text_format: str = DEFAULT_TEXT_FORMAT,
) -> None:
    """The root logger writes to stderr in `log_format`. Calling it again replaces the handler
    it added before; other handlers (a test runner's capture) stay."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _OURS, False):
            root.removeHandler(handler)
    handler = make_handler(service, log_format, text_format)
    setattr(handler, _OURS, True)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else str(level).upper())


def configure_service_logging(
    service: str, settings: Settings, text_format: str = DEFAULT_TEXT_FORMAT
) -> None:
    """configure_logging with MEDREGA_LOG_FORMAT / MEDREGA_LOG_LEVEL."""
    configure_logging(service, settings.effective_log_format, settings.log_level, text_format)


def route_to_root(*logger_names: str) -> None:
    """Let these loggers (uvicorn's: it installs its own handlers) write through the root
    handler, in the same format; their own filters (access-log redaction) still apply."""
    for name in logger_names:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
