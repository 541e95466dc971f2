"""The Celery application: broker, queues and the delivery guarantees every task relies on.

Three lanes (README "Queues"):
- `draft` — model drafts, a RabbitMQ priority queue (`x-max-priority`); the relay sets each
  message's priority from its job (`services.worker.lanes.draft_priority`), so X-rays and
  studies already found critical are drafted before CT/MR series that were queued earlier.
- `interactive` — Locate / Identify for the review UI, consumed by its own worker process with
  its own model session, so a click never waits behind a draft backlog.
- `delivery` — deliveries to the PACS and the RIS, a priority queue too: signed reports before
  drafts, ORUs before SRs (`services.worker.lanes.delivery_priority`).

Payloads are JSON objects of database IDs: the database is the source of truth and every task
re-reads what it needs.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_init
from kombu import Exchange, Queue

from shared.config import get_settings
from shared.large_buffers import keep_large_buffers

settings = get_settings()
DRAFT_QUEUE = f"{settings.queue_prefix}draft"
INTERACTIVE_QUEUE = f"{settings.queue_prefix}interactive"
DELIVERY_QUEUE = f"{settings.queue_prefix}delivery"
# Before the lanes: drafts and Locate/Identify shared one plain queue `gpu`, deliveries one plain
# queue `io`. RabbitMQ refuses to redeclare a queue with new arguments, so the priority lanes
# have new names and the relay retires the old ones (services.worker.relay.retire_legacy_queues).
# Priorities 0..9 (RabbitMQ keeps one sub-queue per level: few levels are cheaper).
MAX_PRIORITY = 9

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
    # Long GPU tasks: never hoard messages. With acks_late the running task's message is the
    # one unacknowledged message the broker allows, so the next one is chosen by priority only
    # when the model is free — a message prefetched earlier would already have jumped the queue.
    worker_prefetch_multiplier=1,
    task_queues=(
        Queue(
            DRAFT_QUEUE,
            Exchange(DRAFT_QUEUE),
            routing_key=DRAFT_QUEUE,
            durable=True,
            max_priority=MAX_PRIORITY,
        ),
        Queue(
            INTERACTIVE_QUEUE,
            Exchange(INTERACTIVE_QUEUE),
            routing_key=INTERACTIVE_QUEUE,
            durable=True,
        ),
        Queue(
            DELIVERY_QUEUE,
            Exchange(DELIVERY_QUEUE),
            routing_key=DELIVERY_QUEUE,
            durable=True,
            max_priority=MAX_PRIORITY,
        ),
    ),
    task_default_queue=DELIVERY_QUEUE,
    task_default_delivery_mode="persistent",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

# Tasks live in their own module; imported here so `celery -A services.worker.celery_app` has them.
app.conf.include = ["services.worker.tasks", "services.worker.interactive"]


@worker_init.connect
def _keep_large_image_buffers(**_: object) -> None:
    """Before the pool's threads start: image-sized buffers are reused, not mapped afresh
    (shared/large_buffers.py; drafts and clicks read and preprocess full-size X-rays)."""
    keep_large_buffers()


@worker_init.connect
def _refuse_to_start_without_the_configured_gpu(**_: object) -> None:
    """A GPU worker that would silently run on the CPU must not start at all.

    The model workers (draft lane, interactive lane) run the threads pool: no fork, so loading
    the model here does not initialise CUDA before a fork.
    """
    if settings.model_require_gpu:
        from services.worker.tasks import model_backend

        model_backend()  # raises ProviderError with the reason; Celery exits non-zero


# Logging, /metrics and correlation ids for every worker, from Celery's signals.
from services.worker import observability  # noqa: E402, F401
