"""The web app's /metrics (prometheus_client): this process's HTTP requests and latency, the
database's backlog (studies, draft jobs and deliveries by state, the oldest undelivered item,
refused associations: shared.observability.backlog), the worker lanes' depths when the broker
answers quickly, and the draft latency of the last 24 h from the database.

Under PROMETHEUS_MULTIPROC_DIR (uvicorn with several workers) the HTTP figures are summed over
the web processes (shared.observability.exporter).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, text

from shared.observability.backlog import BacklogCollector
from shared.observability.exporter import build_registry
from shared.observability.metrics import WEB, WEB_REQUEST_SECONDS, WEB_REQUESTS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Draft latency over the last 24 h: from stability (job created) to the stored draft, and the
# worker's own processing time.
_DRAFT_LATENCY = text(
    "SELECT count(*), "
    "coalesce(sum(extract(epoch FROM finished_at - created_at)), 0), "
    "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)), "
    "percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)), "
    "percentile_cont(0.5) WITHIN GROUP (ORDER BY (timings->>'total_ms')::float / 1000), "
    "percentile_cont(0.95) WITHIN GROUP (ORDER BY (timings->>'total_ms')::float / 1000) "
    "FROM draft_jobs WHERE state = 'done' AND finished_at > now() - interval '24 hours'"
)


def _route_template(scope: Any) -> str:
    # The matched route's path template, never the raw path: raw paths carry study ids and UIDs
    # (unbounded label cardinality, and UIDs are identifiers).
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


def observe_request(scope: Any, status: int, seconds: float) -> None:
    route = _route_template(scope)
    method = str(scope.get("method", ""))
    WEB_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
    WEB_REQUEST_SECONDS.labels(route=route).observe(seconds)


class DraftLatencyCollector(Collector):
    """The last 24 h of drafts as quantiles (the stage histograms live in the draft worker)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        with self.engine.connect() as conn:
            count, total, p50, p95, w50, w95 = conn.execute(_DRAFT_LATENCY).one()
        latency = Metric(
            "medrega_draft_latency_seconds",
            "Draft job creation to stored draft, last 24 h.",
            "summary",
        )
        for quantile, value in (("0.5", p50), ("0.95", p95)):
            latency.add_sample(
                "medrega_draft_latency_seconds", {"quantile": quantile}, float(value or 0)
            )
        latency.add_sample("medrega_draft_latency_seconds_sum", {}, float(total))
        latency.add_sample("medrega_draft_latency_seconds_count", {}, int(count))
        yield latency
        processing = GaugeMetricFamily(
            "medrega_draft_processing_seconds",
            "Worker time per draft (load to stored), last 24 h.",
            labels=["quantile"],
        )
        processing.add_metric(["0.5"], float(w50 or 0))
        processing.add_metric(["0.95"], float(w95 or 0))
        yield processing


def exposition(engine: Engine, *, with_queues: bool = True) -> str:
    from shared.config import get_settings

    settings = get_settings()
    backlog = BacklogCollector(
        engine,
        broker_url=settings.broker_url if with_queues else None,
        queue_prefix=settings.queue_prefix,
    )
    registry = build_registry(WEB, [backlog, DraftLatencyCollector(engine)])
    return generate_latest(registry).decode("utf-8")
