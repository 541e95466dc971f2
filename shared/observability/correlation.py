"""The correlation id of a log line: which study it is about, never who the patient is.

`study-<row id>`: the studies table's own key, the same in the listener's sweeper, the workers
and the web app, and what an operator looks up (the review UI's /studies/<id>). It says nothing
about the patient; the Study Instance UID, names, IDs and accession numbers never go in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

_current: ContextVar[str | None] = ContextVar("medrega_correlation_id", default=None)


def study_correlation_id(study_id: int) -> str:
    return f"study-{int(study_id)}"


def current_correlation_id() -> str | None:
    return _current.get()


def bind_study(study_id: int | None) -> Token[str | None]:
    """Log lines of this thread/task from now on carry the study (None: no study)."""
    return _current.set(study_correlation_id(study_id) if study_id is not None else None)


def unbind(token: Token[str | None]) -> None:
    _current.reset(token)


@contextmanager
def study_context(study_id: int | None) -> Iterator[None]:
    token = bind_study(study_id)
    try:
        yield
    finally:
        unbind(token)
