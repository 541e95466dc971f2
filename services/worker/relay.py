"""Outbox relay: publishes work that the database says is due, so nothing recorded is ever lost.

The listener records draft jobs and the drafting transaction records deliveries; neither talks to
the broker. This relay turns rows into Celery messages:
- draft jobs that are `pending` (never published, or waiting out a backoff until
  `next_attempt_at` because the model server was unreachable), `queued` but published long ago (a message
  lost with a broker), or `running` with no worker holding their advisory lock (worker died);
- deliveries that are `pending` or `retrying` whose `next_attempt_at` has come (publishing
  pushes it two minutes on, so an unclaimed message is published again);
- deliveries `in_flight` past their lease with no worker holding their advisory lock: the
  attempt died with its worker; it is recorded as failed (transient) and scheduled again.
Duplicates are harmless: tasks lock, re-check state and send derived-ID (idempotent) messages.

It runs as its own small process (`python -m services.worker.relay`), not inside a worker, so
it never competes with the model for the GIL and survives a worker crash. Run one per site or
several: a PostgreSQL advisory lock makes one of them the leader at a time. `--once` runs one
pass (tests, ops); `--check` is the container health check.
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import Engine, or_, select, update
from sqlalchemy.orm import sessionmaker

from services.worker.lanes import (
    delivery_priority,
    delivery_priority_of,
    job_priority,
    make_queued_drafts_due,
    retire_legacy_queue,
)
from shared.db.advisory_locks import LockSpace, is_locked_elsewhere, try_advisory_lock
from shared.db.models import Delivery, DeliveryKind, DeliveryState, DraftJob, DraftJobState
from shared.db.outbox import OUTBOX_CHANNEL
from shared.db.session import libpq_url
from shared.observability.backlog import BacklogCollector
from shared.observability.exporter import serve_metrics
from shared.observability.logs import configure_service_logging
from shared.observability.metrics import RELAY, RELAY_PUBLISHED
from shared.reports import deliveries as deliveries_rules

log = logging.getLogger(__name__)

# A queued job not started after this long is published again (duplicates are harmless).
REPUBLISH_QUEUED_AFTER = timedelta(minutes=10)
# A delivery published but not claimed by a worker this long after (message lost with a broker)
# is published again; duplicates are harmless (the claim serialises them).
REPUBLISH_UNCLAIMED_AFTER = timedelta(minutes=2)
BATCH = 200
# The plain queues before the lanes (drafts + Locate/Identify; deliveries).
LEGACY_QUEUES = ("gpu", "io")

Publisher = Callable[[str, int], None]  # (task kind "draft" | "deliver", row id)


@dataclass(frozen=True)
class RelayCounts:
    drafts: int
    deliveries: int


def _due_draft_jobs(engine: Engine, now: datetime) -> list[tuple[int, str]]:
    factory = sessionmaker(engine)
    with factory() as session:
        rows = session.execute(
            select(DraftJob.id, DraftJob.state)
            .where(
                or_(
                    (DraftJob.state == DraftJobState.PENDING)
                    & or_(DraftJob.next_attempt_at.is_(None), DraftJob.next_attempt_at <= now),
                    (DraftJob.state == DraftJobState.QUEUED)
                    & (DraftJob.published_at < now - REPUBLISH_QUEUED_AFTER),
                    DraftJob.state == DraftJobState.RUNNING,
                )
            )
            # Shortest job first within a pass; across passes the draft lane's message
            # priorities (services.worker.lanes) keep X-rays ahead of CTs already queued.
            .order_by(DraftJob.instance_count, DraftJob.id)
            .limit(BATCH)
        ).all()
    return [(row.id, row.state) for row in rows]


def _take_due_deliveries(engine: Engine, now: datetime) -> list[tuple[int, int]]:
    """(delivery id, message priority) of the deliveries due now, in publishing order, each
    pushed REPUBLISH_UNCLAIMED_AFTER on (published, not claimed: if no worker claims it by then,
    it is published again). One transaction for the whole batch: during a burst the relay
    publishes four messages a study (SR, GSPS, KOS, ORU), and a transaction per row made them
    queue behind each other. Rows a worker is claiming right now are skipped, not waited for."""
    with sessionmaker(engine).begin() as session:
        rows = session.execute(
            select(Delivery.id, Delivery.kind, Delivery.result_status)
            .where(
                Delivery.state.in_(deliveries_rules.OPEN_STATES),
                or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
            )
            # The ORU first: it is what the RIS and the referring clinician read, it is
            # cheap, and an SR C-STORE to a busy PACS must not hold it up.
            .order_by(
                Delivery.next_attempt_at.nulls_first(),
                (Delivery.kind == DeliveryKind.HL7).desc(),
                Delivery.id,
            )
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        ).all()
        if rows:
            session.execute(
                update(Delivery)
                .where(Delivery.id.in_([row.id for row in rows]))
                .values(next_attempt_at=now + REPUBLISH_UNCLAIMED_AFTER)
                .execution_options(synchronize_session=False)
            )
    return [
        (row.id, delivery_priority(kind=row.kind, result_status=row.result_status)) for row in rows
    ]


def _expired_leases(engine: Engine, now: datetime) -> list[int]:
    with sessionmaker(engine)() as session:
        return list(
            session.scalars(
                select(Delivery.id)
                .where(Delivery.state == DeliveryState.IN_FLIGHT, Delivery.lease_until < now)
                .limit(BATCH)
            ).all()
        )


def relay_once(engine: Engine, publish: Publisher, now: datetime | None = None) -> RelayCounts:
    now = now or datetime.now(UTC)
    factory = sessionmaker(engine, expire_on_commit=False)
    drafts = 0
    for job_id, state in _due_draft_jobs(engine, now):
        if state == DraftJobState.RUNNING and is_locked_elsewhere(
            engine, LockSpace.DRAFT_JOB, job_id
        ):
            continue  # a live worker is on it
        with factory.begin() as session:
            job = session.get(DraftJob, job_id, with_for_update=True)
            if job is None or job.state != state:
                continue
            # 'running' with no lock holder: its worker died; queue it again, once.
            job.state = DraftJobState.QUEUED
            job.published_at = now
        publish("draft", job_id)
        drafts += 1

    for delivery_id in _expired_leases(engine, now):
        if is_locked_elsewhere(engine, LockSpace.DELIVERY, delivery_id):
            continue  # a live worker is still on it
        with factory.begin() as session:
            if deliveries_rules.take_back_expired(session, delivery_id, now):
                log.warning("delivery %s: attempt lease ran out; scheduled again", delivery_id)

    deliveries = 0
    for delivery_id, priority in _take_due_deliveries(engine, now):
        publish_delivery(publish, delivery_id, priority)
        deliveries += 1
    if drafts or deliveries:
        log.info("relay published %d draft job(s), %d delivery(ies)", drafts, deliveries)
    return RelayCounts(drafts, deliveries)


class CeleryPublisher:
    """Sends the relay's messages to the lanes, each with its message priority; optionally
    counting them (medrega_relay_published_total)."""

    def __init__(self, engine: Engine, *, count: bool = False) -> None:
        self.engine = engine
        self.count = count

    def __call__(self, kind: str, row_id: int, priority: int | None = None) -> None:
        from services.worker.celery_app import DELIVERY_QUEUE, DRAFT_QUEUE, app

        if kind == "draft":
            # The draft lane is a priority queue: X-rays and critical studies go first.
            priority = job_priority(self.engine, row_id) if priority is None else priority
            app.send_task(
                "medrega.draft_study", args=[row_id], queue=DRAFT_QUEUE, priority=priority
            )
        else:
            # Signed reports before drafts, ORUs before SRs.
            if priority is None:
                priority = delivery_priority_of(self.engine, row_id)
            app.send_task("medrega.deliver", args=[row_id], queue=DELIVERY_QUEUE, priority=priority)
        if self.count:
            RELAY_PUBLISHED.labels(kind=kind).inc()


def publish_delivery(publish: Publisher, delivery_id: int, priority: int) -> None:
    """Publish with the priority the relay already read (a plain publisher takes none)."""
    if isinstance(publish, CeleryPublisher):
        publish("deliver", delivery_id, priority)
    else:
        publish("deliver", delivery_id)


def retire_legacy_queues(engine: Engine) -> None:
    """Upgrade from the plain `gpu` and `io` queues (see services.worker.lanes)."""
    from shared.config import get_settings

    settings = get_settings()
    for name in LEGACY_QUEUES:
        queue = settings.queue_prefix + name
        try:
            retired = retire_legacy_queue(settings.broker_url, queue)
        except Exception:  # the broker is away: the next relay start tries again
            log.exception("could not retire the legacy queue %s", queue)
            continue
        if retired is not None and name == "gpu":
            # Its draft messages are gone: publish every still-queued job again now. (Deliveries
            # from `io` need nothing: unclaimed ones are published again within two minutes.)
            due = make_queued_drafts_due(engine, datetime.now(UTC), REPUBLISH_QUEUED_AFTER)
            log.warning("%d queued draft job(s) published again", due)


def _listen(engine: Engine) -> psycopg.Connection[Any]:
    """A plain psycopg connection LISTENing on the outbox channel."""
    connection = psycopg.connect(
        libpq_url(engine.url.render_as_string(hide_password=False)), autocommit=True
    )
    connection.execute(f"LISTEN {OUTBOX_CHANNEL}")
    return connection


def run_forever(
    engine: Engine,
    publish: Publisher,
    stop: threading.Event,
    interval_s: float = 1.0,
    on_leadership: Callable[[Engine], None] | None = None,
) -> None:
    """Leader-elected loop: only the process holding the relay lock publishes.

    It wakes on NOTIFY (new job or deliveries committed) or every `interval_s` (due retries,
    dead workers), whichever comes first.
    """
    while not stop.is_set():
        try:
            with try_advisory_lock(engine, LockSpace.RELAY, 0) as leader:
                if not leader:
                    stop.wait(interval_s)
                    continue
                if on_leadership is not None:
                    on_leadership(engine)
                with _listen(engine) as listener:
                    while not stop.is_set():
                        relay_once(engine, publish)
                        # Drain what arrived meanwhile, then wait for the next one.
                        for _ in listener.notifies(timeout=interval_s, stop_after=1):
                            pass
        except Exception:  # the database or broker went away: log, wait, try again
            log.exception("relay pass failed; retrying")
            stop.wait(interval_s)


def main() -> None:
    from shared.db.session import get_engine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    parser.add_argument(
        "--check", action="store_true", help="exit 0 when the database and broker answer"
    )
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    from shared.config import get_settings

    settings = get_settings()
    configure_service_logging("relay", settings, "%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.check:
        from kombu import Connection

        with get_engine().connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        with Connection(get_settings().broker_url, connect_timeout=5) as broker:
            broker.ensure_connection(max_retries=1)
        return
    if args.once:
        engine = get_engine()
        print(relay_once(engine, CeleryPublisher(engine)))
        return
    engine = get_engine()
    serve_metrics(
        "relay",
        settings.metrics_port_relay,
        settings.metrics_host,
        RELAY,
        [
            BacklogCollector(
                engine, broker_url=settings.broker_url, queue_prefix=settings.queue_prefix
            )
        ],
    )
    run_forever(
        engine,
        CeleryPublisher(engine, count=True),
        threading.Event(),
        args.interval,
        on_leadership=retire_legacy_queues,
    )


if __name__ == "__main__":
    main()
