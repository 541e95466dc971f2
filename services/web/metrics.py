"""Prometheus text exposition, written by hand (a dozen series do not need a client library).

Process-local: HTTP request counts and latency histogram of this web process. From the database
(the source of truth, so every web replica reports the same): studies by state, draft jobs by
state, draft latency, deliveries by kind and state. From the broker, when it answers quickly:
queue depth of the worker queues.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

from sqlalchemy import Engine, text

# Seconds; the worklist and review budgets (150/300 ms) fall between buckets on purpose.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0)

_lock = threading.Lock()
_requests: dict[tuple[str, str, str], int] = defaultdict(int)
_latency_counts: dict[str, list[int]] = {}
_latency_sum: dict[str, float] = defaultdict(float)


def _route_template(scope: Any) -> str:
    # The matched route's path template, never the raw path: raw paths carry study ids and UIDs
    # (unbounded label cardinality, and UIDs are identifiers).
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


def observe_request(scope: Any, status: int, seconds: float) -> None:
    route = _route_template(scope)
    method = str(scope.get("method", ""))
    with _lock:
        _requests[(method, route, str(status))] += 1
        counts = _latency_counts.setdefault(route, [0] * (len(LATENCY_BUCKETS) + 1))
        for index, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                counts[index] += 1
        counts[-1] += 1
        _latency_sum[route] += seconds


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


def _http_lines() -> list[str]:
    lines = [
        "# HELP medrega_web_requests_total HTTP requests served by this web process.",
        "# TYPE medrega_web_requests_total counter",
    ]
    with _lock:
        requests = dict(_requests)
        latency = {k: list(v) for k, v in _latency_counts.items()}
        sums = dict(_latency_sum)
    for (method, route, status), count in sorted(requests.items()):
        lines.append(
            f"medrega_web_requests_total{_labels(method=method, route=route, status=status)} "
            f"{count}"
        )
    lines += [
        "# HELP medrega_web_request_seconds HTTP request latency in this web process.",
        "# TYPE medrega_web_request_seconds histogram",
    ]
    for route, counts in sorted(latency.items()):
        for bound, count in zip(LATENCY_BUCKETS, counts, strict=False):
            lines.append(
                f"medrega_web_request_seconds_bucket{_labels(route=route, le=f'{bound:g}')} {count}"
            )
        lines.append(
            f"medrega_web_request_seconds_bucket{_labels(route=route, le='+Inf')} {counts[-1]}"
        )
        lines.append(f"medrega_web_request_seconds_sum{_labels(route=route)} {sums[route]:.6f}")
        lines.append(f"medrega_web_request_seconds_count{_labels(route=route)} {counts[-1]}")
    return lines


def _database_lines(engine: Engine) -> list[str]:
    from shared.db.models import DeliveryState, DraftJobState, StudyState
    from shared.listener_peers import REFUSAL_REASONS

    lines: list[str] = []
    with engine.connect() as conn:
        studies: dict[str, int] = dict(
            conn.execute(text("SELECT state, count(*) FROM studies GROUP BY state")).all()
        )
        jobs: dict[str, int] = dict(
            conn.execute(text("SELECT state, count(*) FROM draft_jobs GROUP BY state")).all()
        )
        deliveries = conn.execute(
            text("SELECT kind, state, count(*) FROM deliveries GROUP BY kind, state")
        ).all()
        refusals: dict[str, int] = dict(
            conn.execute(
                text("SELECT reason, sum(count) FROM listener_refusals GROUP BY reason")
            ).all()
        )
        # Draft latency over the last 24 h: from stability (job created) to the stored draft,
        # and the worker's own processing time.
        latency = conn.execute(
            text(
                "SELECT count(*), "
                "coalesce(sum(extract(epoch FROM finished_at - created_at)), 0), "
                "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)), "
                "percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)), "
                "percentile_cont(0.5) WITHIN GROUP (ORDER BY (timings->>'total_ms')::float / 1000), "
                "percentile_cont(0.95) WITHIN GROUP (ORDER BY (timings->>'total_ms')::float / 1000) "
                "FROM draft_jobs WHERE state = 'done' AND finished_at > now() - interval '24 hours'"
            )
        ).one()
    lines += [
        "# HELP medrega_studies Studies by workflow state.",
        "# TYPE medrega_studies gauge",
    ]
    for state in StudyState:
        lines.append(f"medrega_studies{_labels(state=state.value)} {studies.get(state.value, 0)}")
    lines += ["# HELP medrega_draft_jobs Draft jobs by state.", "# TYPE medrega_draft_jobs gauge"]
    for job_state in DraftJobState:
        lines.append(
            f"medrega_draft_jobs{_labels(state=job_state.value)} {jobs.get(job_state.value, 0)}"
        )
    count, total, p50, p95, w50, w95 = latency
    lines += [
        "# HELP medrega_draft_latency_seconds Draft job creation to stored draft, last 24 h.",
        "# TYPE medrega_draft_latency_seconds summary",
        f'medrega_draft_latency_seconds{{quantile="0.5"}} {float(p50 or 0):.3f}',
        f'medrega_draft_latency_seconds{{quantile="0.95"}} {float(p95 or 0):.3f}',
        f"medrega_draft_latency_seconds_sum {float(total):.3f}",
        f"medrega_draft_latency_seconds_count {int(count)}",
        "# HELP medrega_draft_processing_seconds Worker time per draft (load to stored), last 24 h.",
        "# TYPE medrega_draft_processing_seconds gauge",
        f'medrega_draft_processing_seconds{{quantile="0.5"}} {float(w50 or 0):.3f}',
        f'medrega_draft_processing_seconds{{quantile="0.95"}} {float(w95 or 0):.3f}',
        "# HELP medrega_deliveries Deliveries (SR to the PACS, ORU to the RIS) by state.",
        "# TYPE medrega_deliveries gauge",
    ]
    counted = {(kind, state): n for kind, state, n in deliveries}
    for kind in ("sr", "hl7"):
        for delivery_state in DeliveryState:
            n = counted.get((kind, delivery_state.value), 0)
            lines.append(f"medrega_deliveries{_labels(kind=kind, state=delivery_state.value)} {n}")
    lines += [
        "# HELP medrega_listener_refused_associations_total Associations the DICOM listener "
        "refused, by reason (every listener process; per peer: table listener_refusals).",
        "# TYPE medrega_listener_refused_associations_total counter",
    ]
    for reason in REFUSAL_REASONS:
        n = int(refusals.get(reason, 0))
        lines.append(f"medrega_listener_refused_associations_total{_labels(reason=reason)} {n}")
    return lines


def _queue_lines() -> list[str]:
    """Messages waiting in the worker queues; skipped quietly when the broker is slow or down."""
    from kombu import Connection

    from shared.config import get_settings

    messages = [
        "# HELP medrega_queue_messages Messages waiting in a worker queue.",
        "# TYPE medrega_queue_messages gauge",
    ]
    consumers = [
        "# HELP medrega_queue_consumers Workers consuming a queue.",
        "# TYPE medrega_queue_consumers gauge",
    ]
    up = 1
    try:
        with Connection(get_settings().broker_url, connect_timeout=1) as connection:
            channel = connection.default_channel
            prefix = get_settings().queue_prefix
            for queue in (f"{prefix}gpu", f"{prefix}io"):
                declared = channel.queue_declare(queue=queue, passive=True)
                messages.append(
                    f"medrega_queue_messages{_labels(queue=queue)} {declared.message_count}"
                )
                consumers.append(
                    f"medrega_queue_consumers{_labels(queue=queue)} {declared.consumer_count}"
                )
    except Exception:  # broker down or queue not declared yet: report it, never fail /metrics
        up = 0
        messages, consumers = [], []
    lines = (
        messages
        + consumers
        + [
            "# HELP medrega_broker_up Whether the broker answered this scrape.",
            "# TYPE medrega_broker_up gauge",
            f"medrega_broker_up {up}",
        ]
    )
    return lines


def exposition(engine: Engine, *, with_queues: bool = True) -> str:
    lines = _database_lines(engine) + _http_lines()
    if with_queues:
        lines += _queue_lines()
    return "\n".join(lines) + "\n"
