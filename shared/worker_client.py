"""Ask the interactive lane (Locate / Identify) a question and wait (briefly) for its answer.

A thin client in shared/ so the web needs nothing of the worker's code: it speaks Celery's
message protocol through its own producer-only Celery app (no tasks, no results backend).

Answers come back on a reply queue the client owns: an exclusive, auto-deleted queue on a broker
connection of its own, kept open between calls in a small per-process pool and used by one call
at a time. (Opening a connection and declaring a queue per call took 5.2 ms p50 in a one-off timing
beside a training run: several round trips to the broker, each one more wait for a CPU when the
cores are busy with a burst.) A call sends the task with `reply_to` and an expiry equal to the wait, and waits for the
message whose correlation id is its task id (anything else on the queue is dropped). No answer
in time → `WorkerBusy`: the UI says the model is busy, and that call's channel is closed, not
lent again (a broker that lost the queue would look the same). Before an idle channel is lent,
whatever the broker sent meanwhile (a close, the queue's consumer cancelled) is read, and a
channel it ended is replaced; broker errors during a call are `WorkerBusy` too.
"""

from __future__ import annotations

import functools
import os
import select
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from amqp.exceptions import AMQPError
from celery import Celery
from kombu import Connection, Consumer, Message, Queue
from kombu.exceptions import OperationalError

from shared.config import get_settings

# Idle reply connections kept per process; more concurrent calls open more, closed after use.
MAX_IDLE_REPLY_CHANNELS = 8


class WorkerBusy(Exception):
    """No answer within the timeout (worker busy, down, or the broker unreachable)."""


class ModelCouldNotAnswer(Exception):
    """The worker answered with an error (bad image, frame out of range…)."""


@functools.cache
def _producer_app(broker_url: str) -> Celery:
    app = Celery("medrega-client", broker=broker_url)
    app.conf.update(task_serializer="json", accept_content=["json"], result_backend=None)
    return app


class ReplyChannel:
    """A broker connection and its own reply queue, used by one call at a time."""

    def __init__(self, broker_url: str, queue_prefix: str, connect_timeout_s: float) -> None:
        self.connection = Connection(broker_url, connect_timeout=connect_timeout_s)
        self.queue = Queue(
            f"{queue_prefix}web-reply-{uuid.uuid4()}",
            exclusive=True,
            auto_delete=True,
            durable=False,
        )
        self._answers: dict[str, dict[str, Any]] = {}
        try:
            self.connection.connect()
            self._consumer = Consumer(
                self.connection.channel(),
                queues=[self.queue],
                callbacks=[self._on_message],
                accept=["json"],
            )
            self._consumer.consume()
        except BaseException:
            self.close()
            raise

    def _on_message(self, body: Any, message: Message) -> None:
        message.ack()
        correlation_id = message.properties.get("correlation_id")
        if isinstance(correlation_id, str) and isinstance(body, dict):
            self._answers[correlation_id] = body

    def is_alive(self) -> bool:
        """Still usable: connected, and nothing from the broker says otherwise. What the broker
        sent while the channel sat idle (an EOF, a connection close, its reply queue's consumer
        cancelled, a late answer) is read here, before a call relies on the channel."""
        if not self.connection.connected:
            return False
        try:
            sock = self.connection.connection.sock
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                # A bounded wait, not 0: with part of a frame in, py-amqp retries a
                # non-blocking read in a busy loop until the rest arrives.
                self.connection.drain_events(timeout=0.05)
        except TimeoutError:
            return True
        except Exception:
            return False
        return True

    def wait_for(self, task_id: str, deadline: float) -> dict[str, Any]:
        while task_id not in self._answers:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerBusy()  # the pool closes this channel: late answers die with it
            try:
                self.connection.drain_events(timeout=min(remaining, 0.5))
            except TimeoutError:
                continue
        answer = self._answers.pop(task_id)
        self._answers.clear()  # late answers to calls that gave up
        return answer

    def close(self) -> None:
        try:
            self.connection.release()
        except Exception:
            pass  # already broken: nothing to release


class ReplyChannelPool:
    """Idle `ReplyChannel`s of one process (a forked child starts with none of its parent's)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[tuple[int, str, str], list[ReplyChannel]] = {}

    @contextmanager
    def channel(
        self, broker_url: str, queue_prefix: str, connect_timeout_s: float
    ) -> Iterator[ReplyChannel]:
        key = (os.getpid(), broker_url, queue_prefix)
        reply = self._take_alive(key)
        if reply is None:
            reply = ReplyChannel(broker_url, queue_prefix, connect_timeout_s)
        try:
            yield reply
        except BaseException:
            # Its state is unknown: a broken socket, an answer half read, or (no answer in time)
            # a broker that lost the reply queue without the socket noticing.
            reply.close()
            raise
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < MAX_IDLE_REPLY_CHANNELS:
                idle.append(reply)
                return
        reply.close()

    def _take_alive(self, key: tuple[int, str, str]) -> ReplyChannel | None:
        while True:
            with self._lock:
                idle = self._idle.get(key)
                if not idle:
                    return None
                reply = idle.pop()
            if reply.is_alive():
                return reply
            reply.close()

    def close_all(self) -> None:
        """Close this process's idle channels (never a parent's, inherited across a fork)."""
        pid = os.getpid()
        with self._lock:
            keys = [key for key in self._idle if key[0] == pid]
            channels = [reply for key in keys for reply in self._idle.pop(key)]
        for reply in channels:
            reply.close()


REPLY_CHANNELS = ReplyChannelPool()


def ask_worker(task_name: str, args: list[Any], timeout_s: float) -> dict[str, Any]:
    wait = timeout_s
    settings = get_settings()
    app = _producer_app(settings.broker_url)
    # Read now, not at import: the queue prefix is per deployment (and per test run). The
    # interactive lane has its own consumer and model session: never behind drafts.
    interactive_queue = f"{settings.queue_prefix}interactive"
    task_id = str(uuid.uuid4())
    deadline = time.monotonic() + wait
    try:
        with REPLY_CHANNELS.channel(
            settings.broker_url, settings.queue_prefix, min(2.0, wait)
        ) as reply:
            with app.producer_or_acquire() as producer:
                app.send_task(
                    task_name,
                    args=args,
                    task_id=task_id,
                    queue=interactive_queue,
                    reply_to=reply.queue.name,
                    expires=wait,
                    producer=producer,
                )
            answer = reply.wait_for(task_id, deadline)
    except WorkerBusy:
        raise
    except (OSError, OperationalError, AMQPError) as exc:  # broker unreachable or restarted
        raise WorkerBusy() from exc
    if not answer.get("ok"):
        if answer.get("busy"):  # a served model (mllm backend) is down or slow
            raise WorkerBusy(str(answer.get("error") or "the model server is unavailable"))
        raise ModelCouldNotAnswer(str(answer.get("error") or "no answer"))
    return answer
