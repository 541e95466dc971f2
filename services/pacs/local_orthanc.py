"""Start and stop a local Orthanc (our configuration + routing plugin) for ops, tests and bench.

    python -m services.pacs.local_orthanc start|stop|status --workdir var/orthanc

`start` renders the configuration into the work dir, launches `Orthanc <config>` detached (pid
file `orthanc.pid`, log `orthanc.log` in the work dir) and returns once the REST API answers
with the python plugin loaded; it is a no-op when ours is already running. Tests use
`running_orthanc(...)`, which does the same on free ports and stops Orthanc afterwards.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.pacs.orthanc_config import (
    add_override_arguments,
    ensure_work_directories,
    overrides_from_arguments,
    render_orthanc_config,
    write_orthanc_config,
)
from shared.config import Settings, get_settings

ORTHANC_BINARY = "Orthanc"
CONFIG_FILE_NAME = "orthanc.json"
PID_FILE_NAME = "orthanc.pid"
LOG_FILE_NAME = "orthanc.log"
STARTUP_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 15.0


class OrthancStartError(RuntimeError):
    pass


def orthanc_environment() -> dict[str, str]:
    # Orthanc's DICOM side is DCMTK: without TCP_NODELAY, Nagle's algorithm holds each
    # association near 11 instances/s on loopback (routing a study ran 16x slower).
    return {**os.environ, "TCP_NODELAY": "1"}


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class OrthancClient:
    """Tiny authenticated REST client (urllib: nothing beyond the project's pinned deps)."""

    base_url: str
    user: str
    password: str
    timeout_s: float = 10.0

    def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(self.base_url.rstrip("/") + path, data=body, method=method)
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode("ascii")
        request.add_header("Authorization", f"Basic {token}")
        if body is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            payload: bytes = response.read()
            return payload

    def get_json(self, path: str) -> Any:
        return json.loads(self._request("GET", path))

    def post_json(self, path: str, body: Any) -> Any:
        return json.loads(self._request("POST", path, json.dumps(body).encode("utf-8")))

    def is_ready(self) -> bool:
        """REST answers and the python plugin (our router) is loaded."""
        try:
            plugins = self.get_json("/plugins")
        except (OSError, ValueError):  # URLError/HTTPError/refused/bad JSON are all OSError here
            return False
        return "python" in plugins


@dataclass
class RunningOrthanc:
    workdir: Path
    config_path: Path
    log_path: Path
    http_port: int
    dicom_port: int
    ae_title: str
    client: OrthancClient
    process: subprocess.Popen[bytes] | None = None


def render_into_workdir(settings: Settings, workdir: Path, **overrides: Any) -> Path:
    ensure_work_directories(workdir)
    config = render_orthanc_config(settings, workdir, **overrides)
    return write_orthanc_config(config, workdir / CONFIG_FILE_NAME)


def launch_orthanc(
    settings: Settings, workdir: Path, *, detach: bool = False, **overrides: Any
) -> RunningOrthanc:
    """Render the configuration, start Orthanc, wait until it serves; raise if it does not."""
    workdir = workdir.resolve()
    config_path = render_into_workdir(settings, workdir, **overrides)
    config = json.loads(config_path.read_text(encoding="utf-8"))
    log_path = workdir / LOG_FILE_NAME
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [ORTHANC_BINARY, str(config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=orthanc_environment(),
            cwd=workdir,
            # Detached for ops: the stack script's shell may exit; Orthanc keeps running.
            start_new_session=detach,
        )
    running = RunningOrthanc(
        workdir=workdir,
        config_path=config_path,
        log_path=log_path,
        http_port=int(config["HttpPort"]),
        dicom_port=int(config["DicomPort"]),
        ae_title=str(config["DicomAet"]),
        client=OrthancClient(
            f"http://127.0.0.1:{config['HttpPort']}",
            settings.pacs_http_user,
            settings.secret("pacs_http_password"),
        ),
        process=process,
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not running.client.is_ready():
        if process.poll() is not None:
            raise OrthancStartError(
                f"Orthanc exited with {process.returncode} during start; see {log_path}"
            )
        if time.monotonic() > deadline:
            terminate(process.pid)
            raise OrthancStartError(f"Orthanc did not answer in {STARTUP_TIMEOUT_S}s; {log_path}")
        time.sleep(0.1)
    return running


def terminate(pid: int, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
    """SIGTERM (Orthanc flushes its index and stops jobs cleanly), SIGKILL if it hangs."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def pid_alive(pid: int) -> bool:
    try:
        waited_pid, _ = os.waitpid(pid, os.WNOHANG)  # reap our own child if it is done
        if waited_pid == pid:
            return False
    except ChildProcessError:
        pass  # not our child (ops: started by an earlier command)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is not running.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


@contextmanager
def running_orthanc(
    workdir: Path, settings: Settings | None = None, **overrides: Any
) -> Iterator[RunningOrthanc]:
    """An Orthanc on free loopback ports for the duration of a `with` block (tests, bench)."""
    overrides.setdefault("http_port", free_tcp_port())
    overrides.setdefault("dicom_port", free_tcp_port())
    running = launch_orthanc(settings or get_settings(), workdir, **overrides)
    try:
        yield running
    finally:
        assert running.process is not None
        terminate(running.process.pid)
        running.process.wait(timeout=5)


# --- daemon CLI for ops ----------------------------------------------------------------------


def read_pid(workdir: Path) -> int | None:
    """The pid in the pid file if that process is alive and is an Orthanc (pids get reused)."""
    try:
        pid = int((workdir / PID_FILE_NAME).read_text().strip())
    except (OSError, ValueError):
        return None
    if not pid_alive(pid):
        return None
    try:
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if not command_line or not command_line[0].endswith(ORTHANC_BINARY.encode()):
        return None
    return pid


def client_for(settings: Settings, workdir: Path) -> OrthancClient | None:
    try:
        config = json.loads((workdir / CONFIG_FILE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return OrthancClient(
        f"http://127.0.0.1:{config['HttpPort']}",
        settings.pacs_http_user,
        settings.secret("pacs_http_password"),
        timeout_s=3.0,
    )


def command_start(settings: Settings, workdir: Path, overrides: dict[str, Any]) -> int:
    pid = read_pid(workdir)
    if pid is not None:
        print(f"orthanc already running (pid {pid}, workdir {workdir})")
        return 0
    try:
        running = launch_orthanc(settings, workdir, detach=True, **overrides)
    except OrthancStartError as error:
        print(f"orthanc failed to start: {error}")
        return 1
    assert running.process is not None
    (workdir / PID_FILE_NAME).write_text(f"{running.process.pid}\n")
    print(
        f"orthanc started (pid {running.process.pid}, http 127.0.0.1:{running.http_port}, "
        f"dicom {running.ae_title}@127.0.0.1:{running.dicom_port}, log {running.log_path})"
    )
    return 0


def command_stop(workdir: Path) -> int:
    pid = read_pid(workdir)
    if pid is None:
        print("orthanc not running")
    else:
        terminate(pid)
        print(f"orthanc stopped (pid {pid})")
    (workdir / PID_FILE_NAME).unlink(missing_ok=True)
    return 0


def command_status(settings: Settings, workdir: Path) -> int:
    pid = read_pid(workdir)
    client = client_for(settings, workdir)
    answering = client is not None and client.is_ready()
    print(json.dumps({"running": pid is not None, "pid": pid, "rest_answering": answering}))
    return 0 if pid is not None and answering else 3  # 3: LSB "program is not running"


def command_foreground(settings: Settings, workdir: Path, overrides: dict[str, Any]) -> int:
    """Render the configuration and become Orthanc (containers: PID 1 gets the signals)."""
    workdir = workdir.resolve()
    config_path = render_into_workdir(settings, workdir, **overrides)
    os.execvpe(ORTHANC_BINARY, [ORTHANC_BINARY, str(config_path)], orthanc_environment())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Local Orthanc for medrega-pacs")
    parser.add_argument("action", choices=["start", "stop", "status", "foreground"])
    parser.add_argument("--workdir", type=Path, required=True)
    add_override_arguments(parser)
    arguments = parser.parse_args(argv)
    workdir = arguments.workdir.resolve()
    settings = get_settings()
    if arguments.action == "start":
        return command_start(settings, workdir, overrides_from_arguments(arguments))
    if arguments.action == "stop":
        return command_stop(workdir)
    if arguments.action == "foreground":
        return command_foreground(settings, workdir, overrides_from_arguments(arguments))
    return command_status(settings, workdir)


if __name__ == "__main__":
    raise SystemExit(main())
