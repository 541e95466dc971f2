"""Several "nodes" on this machine, each with its own storage folder, listener, file endpoint
and workers, sharing one PostgreSQL and one RabbitMQ (tests/scale, ops/bench/scale.py).

Nothing is shared on disk: a node's workers read other nodes' files through their file
endpoints (services/listener/file_server.py) into the node's own cache folder.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shared.config import REPO_ROOT
from tests.support.listener_process import RunningListener, free_port, start_listener
from tests.support.worker_process import RunningWorker, start_relay, start_worker


def start_file_server(env: Mapping[str, str], log_path: Path) -> RunningWorker:
    """`python -m services.listener.file_server`; returns once /healthz answers."""
    log_file = open(log_path, "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.listener.file_server"],
        cwd=REPO_ROOT, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=log_file,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    server = RunningWorker(process, log_path)
    url = env["MEDREGA_NODE_READ_URL"] + "/healthz"
    ca = env.get("MEDREGA_NODE_READ_TLS_CA")
    verify = ssl.create_default_context(cafile=ca) if ca else True
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"file server exited {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(url, timeout=2, verify=verify).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"file server not answering in 60 s:\n{server.log()}")
        time.sleep(0.2)


@dataclass
class Node:
    name: str
    work: Path
    env: dict[str, str]
    listener: RunningListener | None = None
    processes: list[RunningWorker] = field(default_factory=list)
    draft_workers: list[RunningWorker] = field(default_factory=list)

    @property
    def storage_dir(self) -> Path:
        return self.work / "storage"

    @property
    def cache_dir(self) -> Path:
        return self.work / "instance-cache"

    def stop(self) -> None:
        for process in [*self.draft_workers, *self.processes]:
            process.stop()
        if self.listener is not None:
            self.listener.stop()


def node_env(name: str, work: Path, base_env: Mapping[str, str], token: str) -> dict[str, str]:
    """The settings that make a process part of node `name` (its folders, its endpoint)."""
    port = free_port()
    return {
        **base_env,
        "MEDREGA_NODE_NAME": name,
        "MEDREGA_STORAGE_DIR": str(work / "storage"),
        "MEDREGA_INSTANCE_CACHE_DIR": str(work / "instance-cache"),
        "MEDREGA_NODE_READ_HOST": "127.0.0.1",
        "MEDREGA_NODE_READ_PORT": str(port),
        "MEDREGA_NODE_READ_URL": f"http://127.0.0.1:{port}",
        "MEDREGA_NODE_READ_TOKEN": token,
    }


def start_node(
    name: str,
    work: Path,
    base_env: Mapping[str, str],
    token: str,
    *,
    allowed_aes: tuple[str, ...],
    stable_age_s: float,
    draft_workers: int = 1,
    delivery_threads: int = 2,
    relay: bool = True,
    listener_processes: int = 1,
) -> Node:
    """A node: listener + file endpoint, `draft_workers` model processes (one thread each, as
    one per GPU), a delivery worker and (by default) a relay (they elect one leader)."""
    import os

    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **node_env(name, work, base_env, token)}
    node = Node(name, work, env)
    try:
        node.processes.append(start_file_server(env, work / "file-server.log"))
        node.listener = start_listener(
            storage_dir=node.storage_dir,
            allowed_aes=allowed_aes,
            stable_age_s=stable_age_s,
            processes=listener_processes,
            env=env,
            log_path=work / "listener.log",
        )
        for i in range(draft_workers):
            node.draft_workers.append(
                start_worker(env, work / f"draft-{i}.log", queues=("draft",), concurrency=1)
            )
        if delivery_threads:
            node.processes.append(
                start_worker(
                    env, work / "delivery.log", queues=("delivery",), concurrency=delivery_threads
                )
            )
        if relay:
            node.processes.append(start_relay(env, work / "relay.log"))
    except BaseException:
        node.stop()
        raise
    return node
