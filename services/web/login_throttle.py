"""Sign-in throttle per (source address, username), decided under a row lock in PostgreSQL.

An attempt is *reserved* before its password is checked: the row for (address, username) is
inserted or locked in one statement (`INSERT … ON CONFLICT DO UPDATE`, which holds the row lock),
the decision taken, the row updated and committed, and only then is the password verified. Parallel wrong passwords therefore queue on the row: each one sees the
previous one's reservation, so no burst gets more checks than the policy allows.

Policy (web_settings): the first LOGIN_FREE_ATTEMPTS failures cost nothing; each further one
pushes the next allowed attempt out (LOGIN_DELAY_BASE_S doubling, capped); after
LOGIN_MAX_FAILURES the pair waits the whole LOGIN_FAILURE_WINDOW_S. A request that comes before
its time is answered 429 with Retry-After and is not counted. A success clears the pair.

Keyed on the address AND the username, so a wrong-password storm from one address slows that
address only: the radiologist signs in from her workstation as usual (invariant 6: nobody can lock
another user out). Audit rows stay bounded: per run of failures of a pair, one `login_failed`
row at its first failure and one `login_throttled` row when it first hits the limit (the count
is in the details); the next successful sign-in's `login` row says how many failures preceded
it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from services.web.web_settings import (
    LOGIN_DELAY_BASE_S,
    LOGIN_DELAY_MAX_S,
    LOGIN_FAILURE_WINDOW_S,
    LOGIN_FREE_ATTEMPTS,
    LOGIN_MAX_FAILURES,
)
from shared.db.models import LoginAttempts

# Expired rows removed per new row: enough to keep up with any rate of new pairs, bounded work.
_CLEANUP_BATCH = 100


@dataclass(frozen=True)
class Reservation:
    """The decision for one attempt."""

    allowed: bool
    failures: int  # attempts counted in the current run, this one included when allowed
    retry_after_s: int  # when refused: seconds until the pair may try again
    audit_failure: bool  # this attempt, if it fails, writes the run's `login_failed` row
    audit_throttle: bool  # this refusal writes the run's `login_throttled` row


def delay_after(failures: int) -> float:
    """Seconds before the next attempt, after `failures` counted attempts."""
    if failures >= LOGIN_MAX_FAILURES:
        return float(LOGIN_FAILURE_WINDOW_S)
    if failures <= LOGIN_FREE_ATTEMPTS:
        return 0.0
    doublings = failures - LOGIN_FREE_ATTEMPTS - 1
    return float(min(LOGIN_DELAY_MAX_S, LOGIN_DELAY_BASE_S * 2**doublings))


def _db_now(db: Session) -> datetime:
    # The database's clock, so every web replica decides against the same one; the wall clock
    # (`clock_timestamp()`), not `now()`: that is the transaction's start, before it waited for
    # the row lock, and would judge a queued attempt by a time earlier than the one it follows.
    now = db.scalar(text("SELECT clock_timestamp()"))
    assert isinstance(now, datetime)
    return now


def reserve(db: Session, remote_addr: str, username: str) -> Reservation:
    """Count this attempt (or refuse it) atomically; commits."""
    # One statement inserts the pair's row or locks the existing one (ON CONFLICT DO UPDATE
    # holds the row lock until commit): parallel attempts of the pair queue here.
    inserted = db.execute(
        insert(LoginAttempts)
        .values(remote_addr=remote_addr, username=username)
        .on_conflict_do_update(
            index_elements=[LoginAttempts.remote_addr, LoginAttempts.username],
            set_={"username": username},
        )
        .returning(text("xmax = 0"))
    ).scalar_one()
    row = db.execute(
        select(LoginAttempts)
        .where(LoginAttempts.remote_addr == remote_addr, LoginAttempts.username == username)
        .execution_options(populate_existing=True)
    ).scalar_one()
    now = _db_now(db)
    if row.failures and now - row.last_attempt_at > timedelta(seconds=LOGIN_FAILURE_WINDOW_S):
        # A quiet window has passed: a new run (and new audit rows).
        row.failures, row.audited_failure, row.audited_throttle = 0, False, False
        row.next_allowed_at = now
    if inserted:  # a new pair: the moment to sweep old ones
        _cleanup(db)
    if now < row.next_allowed_at:
        audit_throttle = row.failures >= LOGIN_MAX_FAILURES and not row.audited_throttle
        row.audited_throttle = row.audited_throttle or audit_throttle
        wait = (row.next_allowed_at - now).total_seconds()
        failures = row.failures
        db.commit()
        return Reservation(False, failures, max(1, int(wait + 0.999)), False, audit_throttle)
    row.failures += 1
    row.last_attempt_at = now
    row.next_allowed_at = now + timedelta(seconds=delay_after(row.failures))
    audit_failure = not row.audited_failure
    row.audited_failure = True
    failures = row.failures
    db.commit()
    return Reservation(True, failures, 0, audit_failure, False)


def clear(db: Session, remote_addr: str, username: str) -> None:
    """A successful sign-in ends the pair's run (not committed: the caller's transaction)."""
    db.execute(
        delete(LoginAttempts).where(
            LoginAttempts.remote_addr == remote_addr, LoginAttempts.username == username
        )
    )


def _cleanup(db: Session) -> None:
    """Drop rows whose run is over, a bounded batch at a time, so anonymous requests with ever
    new usernames cannot grow the table without end."""
    db.execute(
        text(
            "DELETE FROM login_attempts WHERE ctid IN (SELECT ctid FROM login_attempts "
            "WHERE last_attempt_at < now() - make_interval(secs => :window) "
            "AND next_allowed_at < now() LIMIT :batch FOR UPDATE SKIP LOCKED)"
        ),
        {"window": LOGIN_FAILURE_WINDOW_S, "batch": _CLEANUP_BATCH},
    )
