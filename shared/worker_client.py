"""Ask the interactive lane (Locate / Identify) a question and wait (briefly) for its answer.

A thin client in shared/ so the web needs nothing of the worker's code: it speaks Celery's
message protocol through its own producer-only Celery app (no tasks, no results backend).

Each call declares an exclusive, auto-deleted reply queue on its own broker connection, sends
the task with `reply_to` and an expiry equal to the wait, and waits for the message whose
correlation id is the task id. No answer in time → `WorkerBusy`: the UI says the model is busy.
"""

from __future__ import annotations

import functools
import time
import uuid
from typing import Any

from celery import Celery
from kombu import Connection, Consumer, Message, Queue
from kombu.exceptions import OperationalError

from shared.config import get_settings


class WorkerBusy(Exception):
    """No answer within the timeout (worker busy, down, or the broker unreachable)."""


class ModelCouldNotAnswer(Exception):
    """The worker answered with an error (bad image, frame out of range…)."""


@functools.cache
def _producer_app(broker_url: str) -> Celery:
    app = Celery("medrega-client", broker=broker_url)
    app.conf.update(task_serializer="json", accept_content=["json"], result_backend=None)
    return app


def ask_worker(task_name: str, args: list[Any], timeout_s: float) -> dict[str, Any]:
    wait = timeout_s
    settings = get_settings()
    app = _producer_app(settings.broker_url)
    # Read now, not at import: the queue prefix is per deployment (and per test run). The
    # interactive lane has its own consumer and model session: never behind drafts.
    interactive_queue = f"{settings.queue_prefix}interactive"
    task_id = str(uuid.uuid4())
    reply = Queue(
        f"{settings.queue_prefix}web-reply-{task_id}",
        exclusive=True,
        auto_delete=True,
        durable=False,
    )
    answers: list[dict[str, Any]] = []

    def on_message(body: Any, message: Message) -> None:
        message.ack()
        if message.properties.get("correlation_id") == task_id and isinstance(body, dict):
            answers.append(body)

    deadline = time.monotonic() + wait
    try:
        with Connection(settings.broker_url, connect_timeout=min(2.0, wait)) as connection:
            channel = connection.channel()
            with Consumer(channel, queues=[reply], callbacks=[on_message], accept=["json"]):
                with app.producer_or_acquire() as producer:
                    app.send_task(
                        task_name,
                        args=args,
                        task_id=task_id,
                        queue=interactive_queue,
                        reply_to=reply.name,
                        expires=wait,
                        producer=producer,
                    )
                while not answers:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise WorkerBusy()
                    try:
                        connection.drain_events(timeout=min(remaining, 0.5))
                    except TimeoutError:
                        continue
    except WorkerBusy:
        raise
    except (OSError, OperationalError) as exc:  # broker unreachable
        raise WorkerBusy() from exc
    answer = answers[0]
    if not answer.get("ok"):
        if answer.get("busy"):  # a served model (mllm backend) is down or slow
            raise WorkerBusy(str(answer.get("error") or "the model server is unavailable"))
        raise ModelCouldNotAnswer(str(answer.get("error") or "no answer"))
    return answer
