"""The Celery application: broker, queues and the delivery guarantees every task relies on.

Queue `gpu` carries inference (one worker process per GPU owns the model); queue `io` carries
deliveries to the PACS and the RIS. Payloads are JSON objects of database IDs: the database is the
source of truth and every task re-reads what it needs.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_init
from kombu import Exchange, Queue

from shared.config import get_settings

settings = get_settings()
GPU_QUEUE = f"{settings.queue_prefix}gpu"
IO_QUEUE = f"{settings.queue_prefix}io"

app = Celery("medrega", broker=settings.broker_url)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_backend=None,  # results live in Postgres, not in the broker
    task_ignore_result=True,
    # At-least-once: a task is acknowledged only after it finished; a worker that dies
    # mid-task (SIGKILL, OOM) gives the message back to the broker.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,  # long GPU tasks: never hoard messages
    task_queues=(
        Queue(GPU_QUEUE, Exchange(GPU_QUEUE), routing_key=GPU_QUEUE, durable=True),
        Queue(IO_QUEUE, Exchange(IO_QUEUE), routing_key=IO_QUEUE, durable=True),
    ),
    task_default_queue=IO_QUEUE,
    task_default_delivery_mode="persistent",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

# Tasks live in their own module; imported here so `celery -A services.worker.celery_app` has them.
app.conf.include = ["services.worker.tasks", "services.worker.interactive"]


@worker_init.connect
def _refuse_to_start_without_the_configured_gpu(**_: object) -> None:
    """A GPU worker that would silently run on the CPU must not start at all.

    The GPU worker runs the threads pool with one thread (one process per GPU): no fork, so
    loading the model here does not initialise CUDA before a fork.
    """
    if settings.model_require_gpu:
        from services.worker.tasks import model_backend

        model_backend()  # raises ProviderError with the reason; Celery exits non-zero
