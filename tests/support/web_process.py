"""Start the web app (uvicorn, as ops/stack.sh runs it) as a subprocess for a test or a bench."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from shared.config import REPO_ROOT
from tests.support.listener_process import free_port


@dataclass
class RunningWeb:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def answers(base_url: str) -> bool:
    try:
        return httpx.get(base_url + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_web(
    env: Mapping[str, str], log_path: Path, *, port: int | None = None, timeout_s: float = 60.0
) -> RunningWeb:
    """uvicorn serving services.web.app:app on 127.0.0.1; returns once /healthz answers."""
    port = port or free_port()
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "services.web.app:app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning"],
            cwd=REPO_ROOT, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    web = RunningWeb(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout_s
    while not answers(web.base_url):
        if process.poll() is not None:
            raise RuntimeError(f"web app exited with {process.returncode}; see {log_path}")
        if time.monotonic() > deadline:
            web.stop()
            raise TimeoutError(f"web app did not answer within {timeout_s:g} s; see {log_path}")
        time.sleep(0.2)
    return web
