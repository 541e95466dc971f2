"""Keep patient data out of the access log: query strings (worklist searches hold patient names
and IDs) are replaced by `?…` in uvicorn's access lines. Paths carry only row ids and UIDs."""

from __future__ import annotations

import logging

ACCESS_LOGGER = "uvicorn.access"


class RedactQuery(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn's access record args: (client, method, path with query, http version, status)
        args = record.args
        if (
            isinstance(args, tuple)
            and len(args) >= 3
            and isinstance(args[2], str)
            and "?" in args[2]
        ):
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?…", *args[3:])
        return True


def install_query_redaction() -> None:
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, RedactQuery) for f in logger.filters):
        logger.addFilter(RedactQuery())
