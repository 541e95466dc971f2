"""How much work is waiting: the broker's queue depths and the database's pending rows.

Read at scrape time (BacklogCollector: the relay's and the web app's /metrics) and by
`make status` (ops/status.py). The database is the source of truth for what is owed: a message
can sit in no queue at all (published long ago, lost with a broker) and still be owed, so the
oldest undelivered row, not the queue, says how late the system is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, text

LANES = ("draft", "interactive", "delivery")
# Not yet acknowledged by the receiver and not given up on: what the hospital is still owed.
UNDELIVERED_STATES = ("pending", "in_flight", "retrying")


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    messages: int
    consumers: int


@dataclass(frozen=True)
class OldestUndelivered:
    delivery_id: int
    study_id: int
    kind: str
    state: str
    result_status: str
    attempts: int
    created_at: datetime
    age_s: float
    last_error: str | None


@dataclass(frozen=True)
class DatabaseBacklog:
    studies: dict[str, int]
    draft_jobs: dict[str, int]
    deliveries: dict[tuple[str, str], int]  # (kind, state) → rows
    refusals: dict[str, int]  # reason → associations refused, every listener process
    oldest_undelivered_age_s: dict[str, float]  # kind → seconds
    oldest_undelivered: OldestUndelivered | None


def queue_depths(broker_url: str, prefix: str, timeout_s: float = 1.0) -> list[QueueDepth] | None:
    """Each lane's messages and consumers (passive declare: never creates a queue); None when
    the broker does not answer in time. A lane not declared yet counts as empty."""
    from amqp.exceptions import NotFound
    from kombu import Connection

    depths: list[QueueDepth] = []
    try:
        with Connection(broker_url, connect_timeout=timeout_s) as connection:
            channel = connection.channel()
            for lane in LANES:
                name = f"{prefix}{lane}"
                try:
                    _, messages, consumers = channel.queue_declare(name, passive=True)
                except NotFound:  # closes the channel: open another for the next lane
                    channel = connection.channel()
                    messages, consumers = 0, 0
                depths.append(QueueDepth(name, int(messages), int(consumers)))
    except Exception:  # broker down, refused, timed out: report 'down', never fail the caller
        return None
    return depths


def database_backlog(engine: Engine) -> DatabaseBacklog:
    states = ", ".join(f"'{s}'" for s in UNDELIVERED_STATES)
    with engine.connect() as conn:
        studies = {str(s): int(n) for s, n in conn.execute(
            text("SELECT state, count(*) FROM studies GROUP BY state"))}  # fmt: skip
        jobs = {str(s): int(n) for s, n in conn.execute(
            text("SELECT state, count(*) FROM draft_jobs GROUP BY state"))}  # fmt: skip
        deliveries = {(str(k), str(s)): int(n) for k, s, n in conn.execute(
            text("SELECT kind, state, count(*) FROM deliveries GROUP BY kind, state"))}  # fmt: skip
        refusals = {str(r): int(n or 0) for r, n in conn.execute(
            text("SELECT reason, sum(count) FROM listener_refusals GROUP BY reason"))}  # fmt: skip
        ages = {str(k): float(a) for k, a in conn.execute(text(
            "SELECT kind, extract(epoch FROM now() - min(created_at)) FROM deliveries "
            f"WHERE state IN ({states}) GROUP BY kind"))}  # fmt: skip
        oldest = conn.execute(text(
            "SELECT id, study_id, kind, state, result_status, attempts, created_at, "
            "extract(epoch FROM now() - created_at), last_error FROM deliveries "
            f"WHERE state IN ({states}) ORDER BY created_at, id LIMIT 1")).first()  # fmt: skip
    return DatabaseBacklog(
        studies=studies,
        draft_jobs=jobs,
        deliveries=deliveries,
        refusals=refusals,
        oldest_undelivered_age_s=ages,
        oldest_undelivered=OldestUndelivered(
            delivery_id=int(oldest[0]),
            study_id=int(oldest[1]),
            kind=str(oldest[2]),
            state=str(oldest[3]),
            result_status=str(oldest[4]),
            attempts=int(oldest[5]),
            created_at=oldest[6],
            age_s=float(oldest[7]),
            last_error=oldest[8],
        )
        if oldest is not None
        else None,  # fmt: skip
    )


class BacklogCollector(Collector):
    """Gauges read at scrape time: the database's rows by state (every process reports the same
    figures: scrape one, or take max() across them) and, with a broker URL, the lanes' depths."""

    def __init__(
        self, engine: Engine, *, broker_url: str | None = None, queue_prefix: str = ""
    ) -> None:
        self.engine = engine
        self.broker_url = broker_url
        self.queue_prefix = queue_prefix

    def collect(self) -> Iterator[Metric]:
        yield from backlog_metrics(database_backlog(self.engine))
        if self.broker_url is not None:
            yield from queue_metrics(queue_depths(self.broker_url, self.queue_prefix))


def backlog_metrics(backlog: DatabaseBacklog) -> Iterable[Metric]:
    from shared.db.models import DeliveryKind, DeliveryState, DraftJobState, StudyState
    from shared.listener_peers import REFUSAL_REASONS

    studies = GaugeMetricFamily("medrega_studies", "Studies by workflow state.", labels=["state"])
    for study_state in StudyState:
        studies.add_metric([study_state.value], backlog.studies.get(study_state.value, 0))
    jobs = GaugeMetricFamily("medrega_draft_jobs", "Draft jobs by state.", labels=["state"])
    for job_state in DraftJobState:
        jobs.add_metric([job_state.value], backlog.draft_jobs.get(job_state.value, 0))
    deliveries = GaugeMetricFamily(
        "medrega_deliveries",
        "Deliveries (SR to the PACS, ORU to the RIS, ...) by kind and state; retrying and failed "
        "are the ones to watch.",
        labels=["kind", "state"],
    )
    kinds = [kind.value for kind in DeliveryKind]  # every kind, 0 where none: stable series
    for kind in kinds:
        for delivery_state in DeliveryState:
            n = backlog.deliveries.get((kind, delivery_state.value), 0)
            deliveries.add_metric([kind, delivery_state.value], n)
    oldest = GaugeMetricFamily(
        "medrega_oldest_undelivered_seconds",
        "Age of the oldest delivery still owed (pending, in flight or retrying), by kind; 0 when "
        "none is.",
        labels=["kind"],
    )
    for kind in kinds:
        oldest.add_metric([kind], backlog.oldest_undelivered_age_s.get(kind, 0.0))
    refused = CounterMetricFamily(
        "medrega_listener_refused_associations",
        "Associations the DICOM listener refused, by reason (every listener process; per peer: "
        "table listener_refusals).",
        labels=["reason"],
    )
    for reason in REFUSAL_REASONS:
        refused.add_metric([reason], backlog.refusals.get(reason, 0))
    return [studies, jobs, deliveries, oldest, refused]


def queue_metrics(depths: list[QueueDepth] | None) -> Iterable[Metric]:
    messages = GaugeMetricFamily(
        "medrega_queue_messages", "Messages waiting in a worker lane.", labels=["queue"]
    )
    consumers = GaugeMetricFamily(
        "medrega_queue_consumers", "Workers consuming a lane.", labels=["queue"]
    )
    for depth in depths or []:
        messages.add_metric([depth.queue], depth.messages)
        consumers.add_metric([depth.queue], depth.consumers)
    up = GaugeMetricFamily("medrega_broker_up", "Whether the broker answered this scrape.")
    up.add_metric([], 0 if depths is None else 1)
    return [messages, consumers, up]
