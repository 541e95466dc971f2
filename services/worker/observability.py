"""The Celery workers' logging, metrics and correlation ids, from Celery's signals (imported by
celery_app, so every worker has them without the tasks knowing):

- `setup_logging`: our text/JSON logging instead of Celery's (shared.observability.logs);
- `worker_init`: /metrics on the port of the worker's lane (the first of draft, interactive,
  delivery it consumes: MEDREGA_METRICS_PORT_<LANE>_WORKER), with every consumed lane's group;
- `task_prerun`/`task_postrun`: each task's log lines carry its study's correlation id, and
  the task's outcome is counted; the pipeline's stage latencies come from the row's own
  timestamps, read once the task has recorded them (shared.observability.metrics);
- `worker_process_shutdown`: a prefork child's values are marked dead (multiprocess mode).

A metrics failure is logged and never fails a task.
"""

from __future__ import annotations

import logging
import os
import time
from contextvars import Token
from typing import Any

from celery.signals import (
    setup_logging,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_shutdown,
)
from prometheus_client.registry import Collector
from sqlalchemy import text

from shared.config import get_settings
from shared.observability import metrics as m
from shared.observability.correlation import bind_study, unbind
from shared.observability.exporter import multiprocess_dir, serve_metrics
from shared.observability.logs import configure_logging

log = logging.getLogger(__name__)

LANE_METRICS: dict[str, tuple[Collector, ...]] = {
    "draft": m.DRAFT_WORKER,
    "interactive": m.INTERACTIVE_WORKER,
    "delivery": m.DELIVERY_WORKER,
}
# Which row a task's first argument names, and where that row keeps its study. Not for
# Locate/Identify: a radiologist waits on those, and the look-up is a database round trip
# (p50 0.3 ms, p95 7 ms on the 2-core dev box under load) for lines they hardly write.
STUDY_OF_TASK = {
    "medrega.draft_study": "SELECT study_id FROM draft_jobs WHERE id = :id",
    "medrega.deliver": "SELECT study_id FROM deliveries WHERE id = :id",
}
_DRAFT_ROW = text(
    "SELECT state, created_at, started_at, finished_at FROM draft_jobs WHERE id = :id"
)
_DELIVERY_ROW = text(
    "SELECT d.kind, d.result_status, d.created_at, d.delivered_at, s.first_received_at "
    "FROM deliveries d JOIN studies s ON s.id = d.study_id WHERE d.id = :id"
)

_running: dict[str, tuple[Token[str | None], float]] = {}  # task id → (correlation, start)


def consumed_lanes(queue_names: set[str], prefix: str) -> list[str]:
    return [lane for lane in LANE_METRICS if f"{prefix}{lane}" in queue_names]


@setup_logging.connect
def _configure_logging(loglevel: int | str | None = None, **_: Any) -> None:
    settings = get_settings()
    configure_logging(
        "worker", settings.effective_log_format, loglevel or settings.log_level
    )  # -l wins


@worker_init.connect
def _serve_metrics(sender: Any = None, **_: Any) -> None:
    settings = get_settings()
    queues = set(sender.app.amqp.queues.consume_from or {}) if sender is not None else set()
    lanes = consumed_lanes(queues, settings.queue_prefix)
    if not lanes:
        return
    port = int(getattr(settings, f"metrics_port_{lanes[0]}_worker"))
    group = tuple(metric for lane in lanes for metric in LANE_METRICS[lane])
    serve_metrics(f"{lanes[0]}-worker", port, settings.metrics_host, group)


def _row_id(args: Any) -> int | None:
    if args and isinstance(args[0], int) and not isinstance(args[0], bool):
        return int(args[0])
    return None


def _engine() -> Any:
    from shared.db.session import get_engine

    return get_engine()


@task_prerun.connect
def _task_started(task_id: str = "", task: Any = None, args: Any = None, **_: Any) -> None:
    study_id = None
    query, row_id = STUDY_OF_TASK.get(getattr(task, "name", "")), _row_id(args)
    if query is not None and row_id is not None:
        try:
            with _engine().connect() as conn:
                study_id = conn.execute(text(query), {"id": row_id}).scalar()
        except Exception:  # the task itself will meet (and report) a database problem
            log.debug("no study for task %s", task_id, exc_info=True)
    _running[task_id] = (bind_study(study_id), time.perf_counter())


@task_postrun.connect
def _task_finished(
    task_id: str = "", task: Any = None, args: Any = None, retval: Any = None, **_: Any
) -> None:
    token, started = _running.pop(task_id, (None, time.perf_counter()))
    try:
        _observe(getattr(task, "name", ""), _row_id(args), retval, time.perf_counter() - started)
    except Exception:
        log.warning("task %s: metrics not recorded", task_id, exc_info=True)
    finally:
        if token is not None:
            unbind(token)


def _observe(name: str, row_id: int | None, retval: Any, seconds: float) -> None:
    outcome = retval.get("state") if isinstance(retval, dict) else None
    if name in ("medrega.locate", "medrega.identify"):
        task = name.split(".", 1)[1]
        ok = isinstance(retval, dict) and bool(retval.get("ok"))
        m.INTERACTIVE_REQUESTS.labels(task=task, outcome="ok" if ok else "error").inc()
        m.INTERACTIVE_SECONDS.labels(task=task).observe(seconds)
    elif name == "medrega.draft_study" and row_id is not None:
        _observe_draft(row_id)
    elif name == "medrega.deliver" and row_id is not None:
        _observe_delivery(row_id, str(outcome) if outcome else "error")


def _observe_draft(job_id: int) -> None:
    with _engine().connect() as conn:
        row = conn.execute(_DRAFT_ROW, {"id": job_id}).first()
    if row is None:
        return
    state, created_at, started_at, finished_at = row
    m.DRAFT_JOBS.labels(state=str(state)).inc()
    if state == "done":
        for histogram, start in (
            (m.STABLE_TO_DRAFTED, created_at),
            (m.DRAFT_RUN_SECONDS, started_at),
        ):
            seconds = m.seconds_between(start, finished_at)
            if seconds is not None:
                histogram.observe(seconds)


def _observe_delivery(delivery_id: int, outcome: str) -> None:
    with _engine().connect() as conn:
        row = conn.execute(_DELIVERY_ROW, {"id": delivery_id}).first()
    if row is None:
        return
    kind, status, created_at, delivered_at, first_received_at = row
    m.DELIVERY_ATTEMPTS.labels(kind=str(kind), state=outcome).inc()
    if outcome != "delivered":
        return
    seconds = m.seconds_between(created_at, delivered_at)
    if seconds is not None:
        m.DRAFTED_TO_DELIVERED.labels(kind=str(kind), status=str(status)).observe(seconds)
    end_to_end = m.seconds_between(first_received_at, delivered_at)
    if status == "P" and end_to_end is not None:
        m.RECEIVED_TO_DELIVERED.labels(kind=str(kind)).observe(end_to_end)


@worker_process_shutdown.connect
def _mark_child_dead(pid: int | None = None, **_: Any) -> None:
    if multiprocess_dir() is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())
