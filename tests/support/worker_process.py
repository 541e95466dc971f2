"""Start a real Celery worker (our app, on RabbitMQ) as a subprocess for a test.

Queue names get a per-run prefix (MEDREGA_QUEUE_PREFIX) so a test never shares queues with a
running stack or another test run on the same broker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kombu import Connection

from shared.config import REPO_ROOT, Settings


def queue_prefix() -> str:
    return f"t{os.getpid()}-"


@dataclass
class RunningWorker:
    process: subprocess.Popen[bytes]
    log_path: Path

    def kill(self) -> None:
        """SIGKILL the whole worker (a crash, an OOM kill, a pulled plug)."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_worker(
    env: Mapping[str, str],
    log_path: Path,
    *,
    queues: tuple[str, ...] = ("draft", "interactive", "delivery"),
    pool: str = "threads",
    concurrency: int = 3,
) -> RunningWorker:
    prefix = env.get("MEDREGA_QUEUE_PREFIX", queue_prefix())
    child_env = {**os.environ, "MEDREGA_QUEUE_PREFIX": prefix, **env, "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable, "-m", "celery", "-A", "services.worker.celery_app", "worker",
        "-Q", ",".join(prefix + q for q in queues), "--pool", pool, "--concurrency", str(concurrency),
        "-n", f"test-{os.getpid()}-{time.monotonic_ns()}@%h", "--without-heartbeat",
        "--without-gossip", "--without-mingle", "--loglevel", "INFO",
    ]  # fmt: skip
    log_file = open(log_path, "ab")
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=child_env, stdout=log_file, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    worker = RunningWorker(process, log_path)
    deadline = time.monotonic() + 60
    while "ready." not in worker.log():
        if process.poll() is not None:
            raise RuntimeError(f"celery worker exited {process.returncode}:\n{worker.log()}")
        if time.monotonic() > deadline:
            worker.stop()
            raise RuntimeError(f"celery worker not ready in 60 s:\n{worker.log()[-3000:]}")
        time.sleep(0.2)
    return worker


def start_relay(env: Mapping[str, str], log_path: Path) -> RunningWorker:
    """The outbox relay process that publishes due jobs and deliveries."""
    prefix = env.get("MEDREGA_QUEUE_PREFIX", queue_prefix())
    child_env = {**os.environ, "MEDREGA_QUEUE_PREFIX": prefix, **env, "PYTHONUNBUFFERED": "1"}
    log_file = open(log_path, "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.worker.relay", "--interval", "0.5"],
        cwd=REPO_ROOT, env=child_env, stdout=log_file, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    return RunningWorker(process, log_path)


@contextmanager
def worker_process(env: Mapping[str, str], log_path: Path) -> Iterator[RunningWorker]:
    worker = start_worker(env, log_path)
    try:
        yield worker
    finally:
        worker.stop()


def delete_test_queues(prefix: str) -> None:
    """Durable queues outlive the test run; remove ours."""
    with Connection(Settings().broker_url) as connection:
        channel = connection.default_channel
        for name in ("draft", "interactive", "delivery", "gpu", "io"):
            try:
                channel.queue_delete(prefix + name)
            except Exception:  # already gone: nothing to clean
                channel = connection.channel()
