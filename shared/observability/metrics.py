"""Every process's own Prometheus metrics, grouped by the process that moves them.

Metrics are created unregistered (`registry=None`); exporter.py puts a process's group (and
its scrape-time collectors, backlog.py) in the registry it serves, so a listener's /metrics
shows listener metrics only. Under PROMETHEUS_MULTIPROC_DIR (Celery prefork, several uvicorn
workers) the values live in that directory and the exporter's MultiProcessCollector sums
them over the processes.

The pipeline's stages, each observed once, where the transition happens, from the timestamps
the database rows carry (so a retried or re-published step is measured from its first record,
not from whichever process touched it last):

    received → stable      studies.first_received_at → studies.stable_at          (listener)
    stable   → drafted     draft_jobs.created_at → draft_jobs.finished_at          (draft worker)
    drafted  → delivered   deliveries.created_at → deliveries.delivered_at         (delivery
                           worker; a signed report's rows are created at signing)
    received → delivered   studies.first_received_at → delivered_at, preliminary only
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram
from prometheus_client.registry import Collector

# Seconds, from a chest X-ray's sub-second steps to a CT backlog's minutes.
STAGE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
FAST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# The web's worklist and review budgets (150/300 ms) fall between buckets on purpose.
WEB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0)

# --- listener ---
LISTENER_INSTANCES = Counter(
    "medrega_listener_instances",
    "C-STOREs answered by this listener process, by outcome (stored or the refusal's kind).",
    ["outcome"],
    registry=None,
)
LISTENER_STORE_SECONDS = Histogram(
    "medrega_listener_store_seconds",
    "C-STORE handling time (decode, durable file, committed row) in this listener process.",
    buckets=FAST_BUCKETS,
    registry=None,
)
LISTENER_REFUSALS = Counter(
    "medrega_listener_refusals",
    "Associations this listener process refused, by reason (all processes, per peer: the "
    "web app's medrega_listener_refused_associations_total and table listener_refusals).",
    ["reason"],
    registry=None,
)
RECEIVED_TO_STABLE = Histogram(
    "medrega_received_to_stable_seconds",
    "First instance received to the study declared stable (its draft job created).",
    buckets=STAGE_BUCKETS,
    registry=None,
)
LISTENER: tuple[Collector, ...] = (
    LISTENER_INSTANCES,
    LISTENER_STORE_SECONDS,
    LISTENER_REFUSALS,
    RECEIVED_TO_STABLE,
)

# --- draft worker ---
DRAFT_JOBS = Counter(
    "medrega_draft_jobs_finished",
    "Draft tasks run by this worker, by the job's state afterwards (done, not_applicable, "
    "failed, pending = deferred with backoff, ...).",
    ["state"],
    registry=None,
)
STABLE_TO_DRAFTED = Histogram(
    "medrega_stable_to_drafted_seconds",
    "Draft job created (study stable) to the draft stored.",
    buckets=STAGE_BUCKETS,
    registry=None,
)
DRAFT_RUN_SECONDS = Histogram(
    "medrega_draft_run_seconds",
    "Draft job started to finished on the worker (model time and storing).",
    buckets=STAGE_BUCKETS,
    registry=None,
)
DRAFT_WORKER: tuple[Collector, ...] = (DRAFT_JOBS, STABLE_TO_DRAFTED, DRAFT_RUN_SECONDS)

# --- interactive worker ---
INTERACTIVE_REQUESTS = Counter(
    "medrega_interactive_requests",
    "Locate/Identify requests answered by this worker, by task and outcome (ok or error).",
    ["task", "outcome"],
    registry=None,
)
INTERACTIVE_SECONDS = Histogram(
    "medrega_interactive_seconds",
    "Locate/Identify time on the worker.",
    ["task"],
    buckets=FAST_BUCKETS,
    registry=None,
)
INTERACTIVE_WORKER: tuple[Collector, ...] = (INTERACTIVE_REQUESTS, INTERACTIVE_SECONDS)

# --- delivery worker ---
DELIVERY_ATTEMPTS = Counter(
    "medrega_delivery_attempts",
    "Delivery tasks run by this worker, by kind (sr, hl7, ...) and the row's state afterwards: "
    "delivered, retrying (a transient failure, tried again later), failed (given up), "
    "cancelled, waiting (an earlier version not delivered yet), ...",
    ["kind", "state"],
    registry=None,
)
DRAFTED_TO_DELIVERED = Histogram(
    "medrega_drafted_to_delivered_seconds",
    "Delivery created (draft stored, or report signed) to acknowledged by the PACS/RIS, by "
    "kind and result status (P preliminary, F final, C corrected).",
    ["kind", "status"],
    buckets=STAGE_BUCKETS,
    registry=None,
)
RECEIVED_TO_DELIVERED = Histogram(
    "medrega_received_to_delivered_seconds",
    "First instance received to the preliminary (draft) report acknowledged, by kind.",
    ["kind"],
    buckets=STAGE_BUCKETS,
    registry=None,
)
DELIVERY_WORKER: tuple[Collector, ...] = (
    DELIVERY_ATTEMPTS,
    DRAFTED_TO_DELIVERED,
    RECEIVED_TO_DELIVERED,
)

# --- relay ---
RELAY_PUBLISHED = Counter(
    "medrega_relay_published",
    "Messages the outbox relay published, by task kind (draft, deliver).",
    ["kind"],
    registry=None,
)
RELAY: tuple[Collector, ...] = (RELAY_PUBLISHED,)

# --- web ---
WEB_REQUESTS = Counter(
    "medrega_web_requests",
    "HTTP requests served by this web process.",
    ["method", "route", "status"],
    registry=None,
)
WEB_REQUEST_SECONDS = Histogram(
    "medrega_web_request_seconds",
    "HTTP request latency in this web process.",
    ["route"],
    buckets=WEB_BUCKETS,
    registry=None,
)
WEB: tuple[Collector, ...] = (WEB_REQUESTS, WEB_REQUEST_SECONDS)


def seconds_between(start: object, end: object) -> float | None:
    """`end - start` in seconds for two datetimes; None when either is missing or it is
    negative (clock skew between hosts must not poison a histogram)."""
    from datetime import datetime

    if not isinstance(start, datetime) or not isinstance(end, datetime):
        return None
    seconds = (end - start).total_seconds()
    return seconds if seconds >= 0 else None
