"""`make status`, second half: how much work is waiting and what has waited longest.

    python -m ops.status

Prints each worker lane's depth in RabbitMQ (messages waiting, consumers), the draft jobs and
deliveries the database still owes, and the oldest undelivered item (pending, in flight or
retrying) with its age and last error. Row ids only: no patient data. Exit status 1 when the
database does not answer (the broker being down is reported, not an error: the database is
the source of truth and the relay republishes).
"""

from __future__ import annotations

import sys
from typing import TextIO

from shared.config import Settings, get_settings
from shared.observability.backlog import (
    UNDELIVERED_STATES,
    DatabaseBacklog,
    QueueDepth,
    database_backlog,
    queue_depths,
)

WAITING_JOB_STATES = ("pending", "queued", "running")


def duration(seconds: float) -> str:
    """3725 → '1h02m05s'; under a minute with one decimal."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def render(depths: list[QueueDepth] | None, backlog: DatabaseBacklog, prefix: str) -> list[str]:
    lines = [f"queues (RabbitMQ{', prefix ' + repr(prefix) if prefix else ''}):"]
    if depths is None:
        lines.append("  broker not answering")
    for depth in depths or []:
        lines.append(
            f"  {depth.queue:<24} {depth.messages:>6} waiting  {depth.consumers} consumer(s)"
        )
    jobs = ", ".join(f"{s} {backlog.draft_jobs.get(s, 0)}" for s in WAITING_JOB_STATES)
    lines.append(f"draft jobs: {jobs}, failed {backlog.draft_jobs.get('failed', 0)}")
    owed: dict[str, int] = {}
    failed: dict[str, int] = {}
    for (kind, state), n in sorted(backlog.deliveries.items()):
        if state in UNDELIVERED_STATES:
            owed[kind] = owed.get(kind, 0) + n
        elif state == "failed":
            failed[kind] = n
    lines.append(
        "deliveries owed: "
        + (", ".join(f"{kind} {n}" for kind, n in owed.items()) or "none")
        + "; failed (an admin may retry): "
        + (", ".join(f"{kind} {n}" for kind, n in failed.items()) or "none")
    )
    oldest = backlog.oldest_undelivered
    if oldest is None:
        lines.append("oldest undelivered: none")
    else:
        lines.append(
            f"oldest undelivered: delivery {oldest.delivery_id} ({oldest.kind}, "
            f"{oldest.result_status}, {oldest.state}, {oldest.attempts} attempt(s)) of "
            f"study-{oldest.study_id}, waiting {duration(oldest.age_s)} since "
            f"{oldest.created_at.isoformat(timespec='seconds')}"
        )
        if oldest.last_error:
            lines.append(f"  last error: {oldest.last_error[:160]}")
    return lines


def main(settings: Settings | None = None, out: TextIO = sys.stdout) -> int:
    from shared.db.session import get_engine

    settings = settings or get_settings()
    try:
        backlog = database_backlog(get_engine(settings.database_url))
    except Exception as exc:  # unreachable, wrong credentials, no schema yet
        print(f"database: not answering ({type(exc).__name__})", file=out)
        return 1
    depths = queue_depths(settings.broker_url, settings.queue_prefix)
    for line in render(depths, backlog, settings.queue_prefix):
        print(line, file=out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
