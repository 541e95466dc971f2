"""PostgreSQL session-level advisory locks for "only one worker at a time does this".

A lock lives as long as the holding connection: if the worker holding it is killed (SIGKILL,
OOM, lost host), PostgreSQL drops the connection and the lock with it, so a redelivered task or
the relay can take over without any lease timeout guesswork.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session


class LockSpace(enum.IntEnum):
    """First key of the two-key advisory lock: what kind of thing is locked."""

    DRAFT_JOB = 0x4D01
    DELIVERY = 0x4D02
    RELAY = 0x4D03
    # Transaction-level: everything that changes a study's report versions or claims one of its
    # deliveries (shared/reports and the guard triggers of migration 0003 use the same key).
    STUDY_LIFECYCLE = 0x4D10


@contextmanager
def try_advisory_lock(engine: Engine, space: LockSpace, key: int) -> Iterator[bool]:
    """Yields True while this process holds the lock, False if someone else does."""
    with engine.connect() as conn:
        held = try_lock_on(conn, space, key)
        try:
            yield held
        finally:
            if held:
                unlock_on(conn, space, key)


def try_lock_on(conn: Connection, space: LockSpace, key: int) -> bool:
    """Take the lock on this connection if nobody holds it (several locks may share one
    connection; each is released with `unlock_on` or when the connection closes)."""
    held = bool(
        conn.execute(
            text("SELECT pg_try_advisory_lock(:space, :key)"),
            {"space": int(space), "key": key},
        ).scalar()
    )
    conn.commit()  # don't sit idle in a transaction while the caller works
    return held


def unlock_on(conn: Connection, space: LockSpace, key: int) -> None:
    conn.execute(text("SELECT pg_advisory_unlock(:space, :key)"), {"space": int(space), "key": key})
    conn.commit()


def is_locked_elsewhere(engine: Engine, space: LockSpace, key: int) -> bool:
    """True when another live session holds the lock (the relay asks before re-publishing)."""
    with try_advisory_lock(engine, space, key) as held:
        return not held


def lock_study(session: Session, study_id: int) -> None:
    """The study's lifecycle lock, held to the end of the transaction. Taken first by everything
    that writes a report version or claims a delivery (shared/reports), and by the guard
    triggers of migration 0003 with the same key, so there is one lock order everywhere."""
    session.execute(
        text("SELECT pg_advisory_xact_lock(:space, CAST(:key % 2147483647 AS integer))"),
        {"space": int(LockSpace.STUDY_LIFECYCLE), "key": study_id},
    )
