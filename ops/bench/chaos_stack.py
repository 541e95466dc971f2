"""The whole stack on loopback as services the chaos benchmark can kill, stop and start again.

Each service is started with the command the stack and the tests use (tests/support/*_process.py,
services.pacs.local_orthanc, `python -m ops.ris_sink`, uvicorn as in ops/stack.sh), on fixed
ports chosen at the start, so a restarted service is where its peers expect it. Every start gets
its own log file (`<name>.<n>.log`): readiness is read from the log, and an old "ready." must not
answer for a new process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.pacs.local_orthanc import RunningOrthanc, launch_orthanc, terminate
from shared.config import REPO_ROOT, Settings
from tests.support.listener_process import RunningListener, free_port, start_listener
from tests.support.web_process import start_web
from tests.support.worker_process import start_relay, start_worker

START_ATTEMPTS = 3


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout_s:g} s")
        time.sleep(0.2)


@dataclass
class Service:
    """One restartable process: `start()` / `kill()` (SIGKILL) / `stop()` (graceful)."""

    name: str
    log_dir: Path
    starts: int = 0
    process: subprocess.Popen[bytes] | None = None
    _launch: Callable[[Path], subprocess.Popen[bytes]] | None = None
    history: list[str] = field(default_factory=list)

    def next_log(self) -> Path:
        self.starts += 1
        return self.log_dir / f"{self.name}.{self.starts}.log"

    def start(self) -> None:
        assert self._launch is not None
        last: Exception | None = None
        for _ in range(START_ATTEMPTS):
            try:
                self.process = self._launch(self.next_log())
                return
            except (RuntimeError, TimeoutError, OSError) as exc:  # e.g. port still held
                last = exc
                time.sleep(2.0)
        raise RuntimeError(f"{self.name} did not start: {last}")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the service's process group when it has its own, else the process."""
        if self.process is None:
            return
        try:
            if os.getpgid(self.process.pid) == self.process.pid:
                os.killpg(self.process.pid, signal.SIGKILL)
            else:
                self.process.kill()
        except ProcessLookupError:
            pass
        self.process.wait(timeout=15)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        own_group = os.getpgid(self.process.pid) == self.process.pid
        try:
            if own_group:
                os.killpg(self.process.pid, signal.SIGTERM)
            else:
                self.process.terminate()
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass

    def logs(self) -> str:
        parts = sorted(self.log_dir.glob(f"{self.name}.*.log"))
        return "\n".join(p.read_text(errors="replace") for p in parts)


@dataclass
class ChaosStack:
    """Ports, environment and services of one benchmark run."""

    work: Path
    database_url: str
    queue_prefix: str
    listener_stable_age_s: float = 2.0
    pacs_stable_age_s: int = 1
    io_threads: int = 4
    listener_port: int = field(default_factory=free_port)
    pacs_dicom_port: int = field(default_factory=free_port)
    pacs_http_port: int = field(default_factory=free_port)
    ris_port: int = field(default_factory=free_port)
    web_port: int = field(default_factory=free_port)
    services: dict[str, Service] = field(default_factory=dict)
    orthanc: RunningOrthanc | None = None

    def __post_init__(self) -> None:
        self.log_dir = self.work / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.storage_dir = self.work / "storage"
        self.ris_inbox = self.work / "ris-inbox"
        self.ris_inbox.mkdir(parents=True, exist_ok=True)
        self.env = {
            "MEDREGA_DATABASE_URL": self.database_url,
            "MEDREGA_QUEUE_PREFIX": self.queue_prefix,
            "MEDREGA_STORAGE_DIR": str(self.storage_dir),
            "MEDREGA_PACS_PORT": str(self.pacs_dicom_port),
            "MEDREGA_PACS_HTTP_URL": f"http://127.0.0.1:{self.pacs_http_port}",
            "MEDREGA_RIS_PORT": str(self.ris_port),
            "MEDREGA_RIS_TIMEOUT_S": "5",
            "MEDREGA_WEB_PORT": str(self.web_port),
        }
        self.settings = Settings()  # the Orthanc password and AE titles, as the stack has them
        self.web_url = f"http://127.0.0.1:{self.web_port}"
        for name, launch in (
            ("listener", self._launch_listener),
            ("orthanc", self._launch_orthanc),
            ("ris", self._launch_ris),
            ("gpu", self._launch_gpu),
            ("io", self._launch_io),
            ("relay", self._launch_relay),
            ("web", self._launch_web),
        ):
            self.services[name] = Service(name, self.log_dir, _launch=launch)

    # --- launchers: each returns the started process ------------------------------------------
    def _launch_listener(self, log: Path) -> subprocess.Popen[bytes]:
        listener: RunningListener = start_listener(
            storage_dir=self.storage_dir,
            database_url=self.database_url,
            port=self.listener_port,
            allowed_aes=(self.settings.pacs_ae_title, "STORESCU"),
            stable_age_s=self.listener_stable_age_s,
            sweep_interval_s=0.5,
            log_path=log,
        )
        return listener.process

    def _launch_orthanc(self, log: Path) -> subprocess.Popen[bytes]:
        # Orthanc writes its own log in its work dir; `log` only numbers the starts.
        log.write_text(f"see {self.work / 'orthanc' / 'orthanc.log'}\n")
        self.orthanc = launch_orthanc(
            self.settings,
            self.work / "orthanc",
            http_port=self.pacs_http_port,
            dicom_port=self.pacs_dicom_port,
            listener_host="127.0.0.1",
            listener_port=self.listener_port,
            listener_ae_title=self.settings.listener_ae_title,
            stable_age_s=self.pacs_stable_age_s,
        )
        assert self.orthanc.process is not None
        return self.orthanc.process

    def _launch_ris(self, log: Path) -> subprocess.Popen[bytes]:
        # As ops/stack.sh starts it; every start appends to one log, read in order for counting.
        with open(self.log_dir / "ris-sink.log", "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "ops.ris_sink", "--port", str(self.ris_port),
                 "--out", str(self.ris_inbox)],
                cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=out,
                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
            )  # fmt: skip
        log.write_text(f"pid {process.pid}\n")

        def listening() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"RIS sink exited with {process.returncode}")
            return _port_open(self.ris_port)

        _wait(listening, 30, "RIS sink")
        return process

    def _launch_gpu(self, log: Path) -> subprocess.Popen[bytes]:
        return start_worker(self.env, log, queues=("draft", "interactive"), concurrency=1).process

    def _launch_io(self, log: Path) -> subprocess.Popen[bytes]:
        return start_worker(
            self.env, log, queues=("delivery",), concurrency=self.io_threads
        ).process

    def _launch_relay(self, log: Path) -> subprocess.Popen[bytes]:
        return start_relay(self.env, log).process

    def _launch_web(self, log: Path) -> subprocess.Popen[bytes]:
        return start_web(self.env, log, port=self.web_port).process

    # --- whole stack ----------------------------------------------------------------------------
    def start_all(self) -> None:
        for name in ("listener", "orthanc", "ris", "gpu", "io", "relay", "web"):
            self.services[name].start()

    def stop_all(self) -> None:
        """Stop everything this run started, each on its own (one failure stops no other).

        The scratch stack's state is thrown away, so workers, relay and listener are SIGKILLed
        (no waiting for a warm shutdown); Orthanc, the sink and the web app get SIGTERM."""
        for name in ("web", "relay", "gpu", "io", "ris", "orthanc", "listener"):
            service = self.services[name]
            try:
                if name == "orthanc" and service.running():
                    assert service.process is not None
                    terminate(service.process.pid)
                    service.process.wait(timeout=10)
                elif name in ("relay", "gpu", "io", "listener"):
                    if service.running():
                        service.kill()
                else:
                    service.stop()
            except Exception as exc:  # keep stopping the others
                print(f"stopping {name}: {exc!r}", file=sys.stderr)
                try:
                    service.kill()
                except Exception:  # already gone
                    pass

    def stop_orthanc(self) -> None:
        """The PACS goes down: SIGTERM (Orthanc flushes its index), as `local_orthanc stop`."""
        service = self.services["orthanc"]
        if service.process is not None and service.running():
            terminate(service.process.pid)
            service.process.wait(timeout=10)

    def worker_log(self, name: str) -> str:
        return self.services[name].logs()


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0
