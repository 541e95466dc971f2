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
from functools import lru_cache
from typing import Any

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
        outcome = run_draft_job(engine, job_id, model_backend(), get_settings().storage_dir)
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
