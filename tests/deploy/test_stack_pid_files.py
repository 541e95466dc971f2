"""ops/stack.sh's pid files: after a reboot or a crash a pid file may name a process that is
not ours any more. `stop` must not kill it, `status` must not call the service up, and `start`
must not take it for the service (the pid file carries the process's start time for that)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _start_time(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(") ", 1)[1].split()[19]


def _stack(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDREGA_RUN_DIR": str(run_dir)}
    return subprocess.run(
        ["bash", str(ROOT / "ops" / "stack.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def stranger():
    """A process that is not the stack's, in its own session as the stack's daemons are."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def test_stop_leaves_a_process_that_reuses_a_recorded_pid_alone(tmp_path, stranger):
    (tmp_path / "run").mkdir()
    stale = tmp_path / "run" / "relay.pid"
    # the pid is the stranger's; the start time is some earlier process's
    stale.write_text(f"{stranger.pid} {int(_start_time(stranger.pid)) - 1}\n")
    result = _stack(tmp_path, "stop")
    assert result.returncode == 0, result.stderr
    assert stranger.poll() is None, "stop killed a process that was not the stack's"
    assert not stale.exists(), "the stale pid file stays behind"
    assert "stopping relay" not in result.stderr


def test_status_does_not_call_a_reused_pid_up(tmp_path, stranger):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "web.pid").write_text(f"{stranger.pid} 1\n")
    result = _stack(tmp_path, "status")
    assert not any(line.startswith("web ") for line in result.stdout.splitlines()), result.stdout


def test_stop_stops_the_process_its_pid_file_names(tmp_path, stranger):
    """The guard's other side: the recorded process (same pid, same start time) is stopped."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "relay.pid").write_text(f"{stranger.pid} {_start_time(stranger.pid)}\n")
    result = _stack(tmp_path, "stop")
    assert result.returncode == 0, result.stderr
    assert "stopping relay" in result.stderr
    assert stranger.wait(timeout=15) is not None
