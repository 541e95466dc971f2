"""Start the real listener (`python -m services.listener.main`) as a subprocess for a test.

    with listener_process(storage_dir=tmp_path / "storage", stable_age_s=1.0) as listener:
        send_to(listener.host, listener.port, listener.ae_title)

The database is `MEDREGA_DATABASE_URL` from the environment unless `database_url` is given (the
`db_url` fixture of tests/conftest.py exports it). The helper returns once the listener answers
at association level (a C-ECHO, or an association rejection when it refuses on purpose).
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from shared.config import REPO_ROOT

# The tests' own senders, named explicitly: the listener's defaults hold no test AE titles.
DEFAULT_ALLOWED_AES = ("MEDREGA_TEST", "STORESCU", "ORTHANC")


def free_port() -> int:
    """A TCP port that is free right now on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RunningListener:
    process: subprocess.Popen[bytes]
    host: str
    port: int
    ae_title: str
    storage_dir: Path
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def is_running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM (graceful: finishes running associations), SIGKILL after `timeout_s`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def _answers(
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    tls: ssl.SSLContext | None,
    tls_hostname: str,
) -> bool:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = 5
    ae.network_timeout = 5
    tls_args = (tls, tls_hostname) if tls is not None else None
    association = ae.associate(host, port, ae_title=called_ae, tls_args=tls_args)
    if association.is_established:
        status = association.send_c_echo()
        association.release()
        return bool(status) and status.Status == 0x0000
    return bool(association.is_rejected)  # it answered, and refused on purpose


def start_listener(
    *,
    storage_dir: Path,
    database_url: str | None = None,
    port: int | None = None,
    ae_title: str = "MEDREGA_AI",
    allowed_aes: Sequence[str] = DEFAULT_ALLOWED_AES,
    allowed_peers: Sequence[str] | None = None,
    stable_age_s: float = 1.0,
    sweep_interval_s: float = 0.25,
    processes: int = 1,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    echo_tls_context: ssl.SSLContext | None = None,
    echo_tls_hostname: str = "localhost",
    preexec_fn: Callable[[], None] | None = None,
    timeout_s: float = 30.0,
) -> RunningListener:
    """Start a listener on a free port (or `port`) and wait until it answers.

    `env` is applied last (any MEDREGA_* setting, e.g. MEDREGA_STORAGE_MIN_FREE_BYTES or the TLS
    paths). `echo_tls_context` (and `echo_tls_hostname`, checked against the certificate)
    is the client side of the readiness C-ECHO when the listener runs with TLS. `preexec_fn` runs in the child before exec (e.g. to set a
    resource limit that makes storage fail for real).
    """
    port = port or free_port()
    storage_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_path or storage_dir.parent / f"listener-{port}.log"
    child_env = dict(os.environ)
    child_env.update(
        {
            "MEDREGA_LISTENER_HOST": "127.0.0.1",
            "MEDREGA_LISTENER_PORT": str(port),
            "MEDREGA_LISTENER_AE_TITLE": ae_title,
            # Each allowed AE title from loopback, where every test sender runs; `allowed_peers`
            # (AE@address entries) replaces that when a test needs other addresses.
            "MEDREGA_LISTENER_ALLOWED_PEERS": ",".join(
                allowed_peers
                if allowed_peers is not None
                else [f"{ae}@127.0.0.1" for ae in allowed_aes]
            ),
            "MEDREGA_LISTENER_ALLOWED_AES": "",
            "MEDREGA_LISTENER_PROCESSES": str(processes),
            "MEDREGA_STORAGE_DIR": str(storage_dir),
            "MEDREGA_STABLE_AGE_S": str(stable_age_s),
            "MEDREGA_STABILITY_SWEEP_INTERVAL_S": str(sweep_interval_s),
            "MEDREGA_STORAGE_MIN_FREE_BYTES": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if database_url is not None:
        child_env["MEDREGA_DATABASE_URL"] = database_url
    if "MEDREGA_DATABASE_URL" not in child_env:
        raise RuntimeError("no database: set MEDREGA_DATABASE_URL or pass database_url")
    child_env.update(env or {})

    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.listener.main"],
            cwd=REPO_ROOT,
            env=child_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )
    running = RunningListener(process, "127.0.0.1", port, ae_title, storage_dir, log_path)
    if allowed_peers is not None:
        calling_ae = allowed_peers[0].rpartition("@")[0] if allowed_peers else "MEDREGA_TEST"
    else:
        calling_ae = allowed_aes[0] if allowed_aes else "MEDREGA_TEST"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"listener exited with {process.returncode}:\n{running.log_text()}")
        try:
            if _answers(
                "127.0.0.1", port, ae_title, calling_ae, echo_tls_context, echo_tls_hostname
            ):
                return running
        except (OSError, RuntimeError):
            pass
        time.sleep(0.1)
    running.stop()
    raise TimeoutError(f"listener did not answer within {timeout_s} s:\n{running.log_text()}")


@contextmanager
def listener_process(**kwargs: object) -> Iterator[RunningListener]:
    """`start_listener(**kwargs)` as a context manager that always stops it."""
    running = start_listener(**kwargs)  # type: ignore[arg-type]
    try:
        yield running
    finally:
        running.stop()
