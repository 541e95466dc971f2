"""Celery tasks. Payloads are row IDs; each task declares its own retry policy.

- `medrega.draft_study(job_id)` — queue `draft`. Retries only transient infrastructure errors
  (database connection); bad input becomes the job's 'not applicable' or 'failed' state and is
  never retried.
- `medrega.deliver(delivery_id)` — queue `delivery`. One attempt per message; the delivery row records
  the outcome and the next attempt time, and the relay publishes the retry (so backoff survives
  worker and broker restarts).
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import Any

from celery.signals import worker_init
from sqlalchemy.exc import InterfaceError, OperationalError

from services.worker.celery_app import DELIVERY_QUEUE, DRAFT_QUEUE, app
from services.worker.drafting import mark_failed, run_draft_job
from shared.config import get_settings
from shared.db.session import get_engine
from shared.inference.backend import ModelBackend

log = logging.getLogger(__name__)

TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError)

# Every task takes one row id: at-least-once (acked after it ran, given back if the worker dies),
# retried only while the database is unreachable; everything else is recorded on the row.
ROW_TASK_OPTIONS: dict[str, Any] = dict(
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=TRANSIENT_DB_ERRORS,
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=5,
)


def _is_row_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@worker_init.connect
def _lower_cpu_priority(**_: object) -> None:
    """MEDREGA_WORKER_NICE: the nice value this worker process lowers itself to (every thread it
    starts later, ONNX Runtime's included, inherits it), so it yields the CPU to processes of a
    higher priority. For a shared CPU: the draft worker at 10 and the interactive worker at 0,
    so a radiologist's Locate gets the cores before a CT series' slices. 0 (the default) leaves
    the priority alone; raising a priority back would need CAP_SYS_NICE, so this only lowers."""
    nice = get_settings().worker_nice
    if nice > 0:
        lower_cpu_priority_to(nice)
        log.info("CPU priority lowered to nice %d", os.getpriority(os.PRIO_PROCESS, 0))


def lower_cpu_priority_to(nice: int) -> None:
    """Every thread of this process (Linux keeps a nice value per thread) to at least `nice`,
    and so every thread started later (a new thread inherits its creator's)."""
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # not Linux: the process's own priority
        os.nice(max(0, nice - os.getpriority(os.PRIO_PROCESS, 0)))
        return
    for tid in threads:
        try:
            current = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, max(current, nice))
        except ProcessLookupError:  # the thread ended meanwhile
            continue


@lru_cache(maxsize=1)
def model_backend() -> ModelBackend:
    """Loaded once per worker process, on first use (never before a fork)."""
    from shared.inference.backends import create_backend

    return create_backend(get_settings())


@app.task(name="medrega.draft_study", queue=DRAFT_QUEUE, **ROW_TASK_OPTIONS)
def draft_study(job_id: int) -> dict[str, Any]:
    if not _is_row_id(job_id):
        log.error("draft_study got a non-integer job id; dropped")
        return {"state": "rejected"}
    engine = get_engine()
    try:
        settings = get_settings()
        outcome = run_draft_job(
            engine,
            job_id,
            model_backend(),
            settings.storage_dir,
            batch_max=settings.draft_xray_batch,
        )
    except TRANSIENT_DB_ERRORS:
        raise
    except LookupError:
        log.warning("draft job %s does not exist; dropped", job_id)
        return {"state": "missing"}
    except Exception as exc:
        # A bug or an input the backend could not turn into 'not applicable': record it where
        # the UI shows it, then let Celery log the traceback. Not retried: it would fail again.
        mark_failed(engine, job_id, f"{type(exc).__name__}: {exc}")
        raise
    return {"job_id": outcome.job_id, "state": outcome.state, "report_id": outcome.report_id}


@app.task(name="medrega.deliver", queue=DELIVERY_QUEUE, **ROW_TASK_OPTIONS)
def deliver(delivery_id: int) -> dict[str, Any]:
    from services.worker.delivery import attempt_delivery

    if not _is_row_id(delivery_id):
        log.error("deliver got a non-integer delivery id; dropped")
        return {"state": "rejected"}
    state = attempt_delivery(get_engine(), delivery_id)
    return {"delivery_id": delivery_id, "state": state}
