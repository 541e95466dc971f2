"""A PostgreSQL NOTIFY channel that wakes the outbox relay as soon as work is committed.

Writers call `notify_outbox` inside the transaction that creates a draft job or deliveries;
PostgreSQL delivers the notification only on commit, so the relay never sees a row before it
exists. The relay still polls on a timer: a lost notification costs latency, never work.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

OUTBOX_CHANNEL = "medrega_outbox"
NOTIFY_SQL = f"SELECT pg_notify('{OUTBOX_CHANNEL}', '')"


def notify_outbox(session: Session) -> None:
    session.execute(text(NOTIFY_SQL))


def notify_outbox_psycopg(cursor: Any) -> None:
    """Same, for code that talks psycopg directly (the listener's sweeper)."""
    cursor.execute(NOTIFY_SQL)
