"""`python -m services.pacs.local_orthanc start|status|stop`, as ops/stack.sh calls it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from services.pacs.local_orthanc import PID_FILE_NAME, free_tcp_port, pid_alive
from shared.config import REPO_ROOT


def local_orthanc(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.pacs.local_orthanc", *arguments],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_start_is_idempotent_status_reports_and_stop_stops(tmp_path: Path) -> None:
    workdir = tmp_path / "orthanc"
    ports = ["--http-port", str(free_tcp_port()), "--dicom-port", str(free_tcp_port())]
    started = local_orthanc("start", "--workdir", str(workdir), *ports)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        pid = int((workdir / PID_FILE_NAME).read_text())
        assert pid_alive(pid)
        # Orthanc got TCP_NODELAY (DCMTK's routing crawls without it).
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"TCP_NODELAY=1" in environment
        assert (workdir / "orthanc.log").read_text().count("medrega-routing: routing") == 1

        again = local_orthanc("start", "--workdir", str(workdir), *ports)
        assert again.returncode == 0 and "already running" in again.stdout
        assert int((workdir / PID_FILE_NAME).read_text()) == pid

        status = local_orthanc("status", "--workdir", str(workdir))
        assert status.returncode == 0
        assert json.loads(status.stdout) == {"running": True, "pid": pid, "rest_answering": True}
    finally:
        stopped = local_orthanc("stop", "--workdir", str(workdir))
    assert stopped.returncode == 0
    assert not pid_alive(pid)
    assert not (workdir / PID_FILE_NAME).exists()

    status = local_orthanc("status", "--workdir", str(workdir))
    assert status.returncode == 3
    assert json.loads(status.stdout)["running"] is False


def test_stop_ignores_a_stale_pid_file_of_another_program(tmp_path: Path) -> None:
    workdir = tmp_path / "orthanc"
    workdir.mkdir()
    # Our own pid: alive, but not an Orthanc. `stop` must not signal it.
    (workdir / PID_FILE_NAME).write_text(f"{os.getpid()}\n")
    stopped = local_orthanc("stop", "--workdir", str(workdir))
    assert stopped.returncode == 0 and "not running" in stopped.stdout
    assert not (workdir / PID_FILE_NAME).exists()
