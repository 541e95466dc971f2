"""The web's Locate/Identify client keeps its reply connections open between calls, against a
real RabbitMQ and a real interactive worker: a connection is reused, a late answer to a call
that gave up never answers the next call, and a connection that broke while idle is replaced
before a call uses it."""

from __future__ import annotations

import select as io_select
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from kombu import Connection
from sqlalchemy import Engine, select
from sqlalchemy.orm import sessionmaker

from model.phantoms.__main__ import write_phantom_study
from model.phantoms.splits import seeds
from shared.config import get_settings
from shared.db.models import Instance
from shared.worker_client import REPLY_CHANNELS, ReplyChannel, WorkerBusy, ask_worker
from tests.support.study_rows import index_files
from tests.support.worker_process import (
    RunningWorker,
    delete_test_queues,
    queue_prefix,
    start_worker,
)


@pytest.fixture
def interactive_worker(
    clean_db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[RunningWorker, int]]:
    """A real interactive worker with its model loaded, and an X-ray instance to ask about."""
    prefix = queue_prefix() + "reply-"
    storage = tmp_path / "storage"
    monkeypatch.setenv("MEDREGA_QUEUE_PREFIX", prefix)
    get_settings.cache_clear()
    files = write_phantom_study("cxr", seeds("test", 1)[0], tmp_path / "in").files
    with sessionmaker(clean_db).begin() as session:
        study = index_files(session, storage, files)
        instance = session.scalars(select(Instance.id).where(Instance.study_id == study.id)).one()
    env = {"MEDREGA_QUEUE_PREFIX": prefix, "MEDREGA_STORAGE_DIR": str(storage)}
    worker = start_worker(env, tmp_path / "interactive.log", queues=("interactive",), concurrency=1)
    REPLY_CHANNELS.close_all()
    try:
        ask_worker("medrega.locate", [instance, 1, "right lung"], 60.0)  # loads the model
        yield worker, instance
    finally:
        worker.stop()
        REPLY_CHANNELS.close_all()
        delete_test_queues(prefix)
        get_settings.cache_clear()


def _idle_channels() -> list[ReplyChannel]:
    return [reply for idle in REPLY_CHANNELS._idle.values() for reply in idle]


def test_calls_reuse_one_reply_connection(interactive_worker: tuple[RunningWorker, int]) -> None:
    _, instance = interactive_worker
    (first,) = _idle_channels()
    for _ in range(3):
        answer = ask_worker("medrega.locate", [instance, 1, "left lung"], 10.0)
        assert answer["region_code"] == "left_lung"
        assert _idle_channels() == [first]


def test_a_call_that_gave_up_closes_its_channel_and_a_stray_answer_is_dropped(
    interactive_worker: tuple[RunningWorker, int],
) -> None:
    _, instance = interactive_worker
    (warm,) = _idle_channels()
    with pytest.raises(WorkerBusy):
        ask_worker("medrega.locate", [instance, 1, "right lung"], 0.001)  # gives up at once
    # Not lent again: a broker that lost the reply queue would look just like this.
    assert _idle_channels() == [] and not warm.connection.connected
    ask_worker("medrega.locate", [instance, 1, "heart"], 10.0)
    (idle,) = _idle_channels()
    # An answer to some other call on this reply queue (as a worker answering twice would put
    # it) never answers the calls that follow.
    with Connection(get_settings().broker_url) as connection:
        connection.Producer().publish(
            {"ok": True, "region_code": "right_lung", "boxes": []},
            routing_key=idle.queue.name,
            correlation_id="an-earlier-call",
            serializer="json",
        )
    for query, region in (("heart", "heart"), ("left lung", "left_lung")):
        answer = ask_worker("medrega.locate", [instance, 1, query], 10.0)
        assert answer["region_code"] == region
    assert _idle_channels() == [idle]


def _delete_on_the_broker(queue_name: str) -> None:
    """As an operator or a broker failover does (an exclusive queue: no other client may)."""
    subprocess.run(
        ["rabbitmqctl", "-q", "delete_queue", queue_name], check=True, timeout=60,
        capture_output=True,
    )  # fmt: skip


def _wait_until_readable(reply: ReplyChannel) -> None:
    """Until the broker's notice about this channel has reached its socket."""
    readable, _, _ = io_select.select([reply.connection.connection.sock], [], [], 10)
    assert readable, "the broker sent nothing"


def _queue_deleted_on_the_broker(reply: ReplyChannel) -> None:
    _delete_on_the_broker(reply.queue.name)
    _wait_until_readable(reply)  # RabbitMQ tells the consumer: basic.cancel


def _socket_shut_down(reply: ReplyChannel) -> None:
    # As a broker restart or a dropped link does.
    reply.connection.connection.transport.sock.shutdown(socket.SHUT_RDWR)


@pytest.mark.parametrize("break_it", [_queue_deleted_on_the_broker, _socket_shut_down])
def test_a_channel_broken_while_idle_is_replaced(
    interactive_worker: tuple[RunningWorker, int], break_it: Callable[[ReplyChannel], None]
) -> None:
    _, instance = interactive_worker
    (idle,) = _idle_channels()
    break_it(idle)
    answer = ask_worker("medrega.locate", [instance, 1, "heart"], 10.0)
    assert answer["region_code"] == "heart"
    (replacement,) = _idle_channels()
    assert replacement is not idle


def test_a_broker_error_during_a_call_is_busy_not_a_crash(
    interactive_worker: tuple[RunningWorker, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, instance = interactive_worker
    (idle,) = _idle_channels()
    _queue_deleted_on_the_broker(idle)
    # Lent as if nothing had happened (the cancel arriving mid-call): the call meets the
    # broker's ConsumerCancelled, and the web must answer 503, not 500.
    monkeypatch.setattr(ReplyChannel, "is_alive", lambda self: True)
    with pytest.raises(WorkerBusy):
        ask_worker("medrega.locate", [instance, 1, "heart"], 10.0)
    assert _idle_channels() == []


def test_concurrent_calls_each_get_their_own_answer_on_their_own_channel(
    interactive_worker: tuple[RunningWorker, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight request threads at once (the web's thread pool): no channel is lent to two calls
    at the same time, and each call gets the answer to its own question."""
    _, instance = interactive_worker
    queries = [("heart", "heart"), ("left lung", "left_lung"), ("right lung", "right_lung")]
    in_use: set[int] = set()
    shared: list[int] = []
    guard = threading.Lock()
    real_wait_for = ReplyChannel.wait_for

    def watched_wait_for(self: ReplyChannel, task_id: str, deadline: float) -> dict[str, object]:
        with guard:
            if id(self) in in_use:
                shared.append(id(self))
            in_use.add(id(self))
        try:
            return real_wait_for(self, task_id, deadline)
        finally:
            with guard:
                in_use.discard(id(self))

    monkeypatch.setattr(ReplyChannel, "wait_for", watched_wait_for)
    start = threading.Barrier(8)

    def click(index: int) -> tuple[str, object]:
        query, region = queries[index % len(queries)]
        start.wait(timeout=30)
        return region, ask_worker("medrega.locate", [instance, 1, query], 30.0)["region_code"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(click, range(24)))
    assert all(expected == got for expected, got in results), results
    assert shared == []
    assert 1 <= len(_idle_channels()) <= 8
