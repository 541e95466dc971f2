"""The DICOM listener: our Storage SCP (C-ECHO + every storage SOP class), one or more processes.

    python -m services.listener.main [--port N] [--processes N]

Configuration comes from `shared.config.Settings` (MEDREGA_LISTENER_*, MEDREGA_STORAGE_*,
MEDREGA_STABLE_AGE_S, ...). With `listener_processes > 1` a supervisor starts that many serving
processes sharing the port through SO_REUSEPORT (the kernel spreads associations across them:
pynetdicom is bound by the GIL, so one process uses one core at best) and runs the stability
sweeper itself; with 1 the single process does both.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from types import FrameType
from typing import Any, cast

import pynetdicom
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from services.listener.handlers import ListenerContext, handle_echo, handle_requested
from services.listener.indexer import IndexWriter
from services.listener.observed import ObservedRefusalCounter, observed_store
from services.listener.reactor import (
    PYNETDICOM_VERSION,
    EventDrivenRequestHandler,
    event_driven_supported,
)
from services.listener.storage import ContentStore
from services.listener.study_stability import StabilitySweeper
from shared.config import Settings, get_settings
from shared.large_buffers import keep_large_buffers
from shared.log_safety import printable
from shared.observability.exporter import serve_metrics
from shared.observability.logs import configure_service_logging
from shared.observability.metrics import LISTENER

logger = logging.getLogger("services.listener")

# Accepted as proposed and stored as received (we never transcode). Senders that propose one
# transfer syntax per context (DCMTK, Orthanc) get exactly what they have. When a peer lists
# several in ONE context, pynetdicom picks the first of OUR list that it proposed: uncompressed
# first, so we never make a sender compress (least of all lossily) for us.
ACCEPTED_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
]


def supported_contexts() -> list[PresentationContext]:
    contexts: list[PresentationContext] = []
    for storage in AllStoragePresentationContexts:
        context = PresentationContext()
        context.abstract_syntax = storage.abstract_syntax
        context.transfer_syntax = list(ACCEPTED_TRANSFER_SYNTAXES)
        contexts.append(context)
    verification = PresentationContext()
    verification.abstract_syntax = Verification
    verification.transfer_syntax = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    contexts.append(verification)
    return contexts


def build_ae(settings: Settings) -> AE:
    ae = AE(ae_title=settings.listener_ae_title)
    ae.supported_contexts = supported_contexts()
    ae.maximum_associations = settings.listener_max_associations
    ae.maximum_pdu_size = settings.listener_max_pdu
    # No called-AE check: the PACS may address us under another title; the allowed peers (AE
    # title and address or certificate, handle_requested) are what guard the door.
    ae.require_called_aet = False
    return ae


def build_tls_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.listener_tls_cert is None or settings.listener_tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.listener_tls_cert, settings.listener_tls_key)
    if settings.listener_tls_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=settings.listener_tls_ca)
    return context


class NoDelayAssociationServer(ThreadedAssociationServer):
    """Disables Nagle on every accepted connection.

    A C-STORE-RSP is a small write after the peer's last P-DATA; with Nagle on, it waits for the
    peer's delayed ACK and one association crawls at tens of instances per second on loopback
    (the same reason DCMTK needs TCP_NODELAY=1).
    """

    daemon_threads = True

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client_socket, address = super().get_request()
        try:
            client_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # the peer already went away; the association will notice
        return client_socket, address


class ReusePortAssociationServer(NoDelayAssociationServer):
    """Several processes may bind the same port; the kernel balances new connections."""

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class ListenerProcess:
    """One serving process: AE + server thread + index writer (+ the sweeper, if asked)."""

    def __init__(self, settings: Settings, run_sweeper: bool, reuse_port: bool) -> None:
        self.settings = settings
        self.store = ContentStore(settings.storage_dir, settings.storage_min_free_bytes)
        self.index_writer = IndexWriter(settings.database_url)
        self.refusals = ObservedRefusalCounter(settings.database_url)
        self.sweeper = (
            StabilitySweeper(
                settings.database_url, settings.stable_age_s, settings.stability_sweep_interval_s
            )
            if run_sweeper
            else None
        )
        self.ae = build_ae(settings)
        self._reuse_port = reuse_port
        self._server: ThreadedAssociationServer | None = None

    def start(self) -> None:
        self.index_writer.start()
        self.refusals.start()
        peers = self.settings.listener_peer_rules()
        for ae_title in self.settings.listener_allowed_aes:
            logger.warning(
                "MEDREGA_LISTENER_ALLOWED_AES admits %s from any address; name where it calls "
                "from in MEDREGA_LISTENER_ALLOWED_PEERS (%s@address)",
                printable(ae_title),
                printable(ae_title),
            )
        context = ListenerContext(
            store=self.store,
            index_writer=self.index_writer,
            allowed_peers=peers,
            refusals=self.refusals,
        )
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, handle_requested, [context]),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, observed_store, [context]),
        ]
        server_class = ReusePortAssociationServer if self._reuse_port else NoDelayAssociationServer
        extra: dict[str, Any] = {}
        if event_driven_supported():
            extra["request_handler"] = EventDrivenRequestHandler
        else:
            logger.warning(
                "pynetdicom %s is not %s: its own polling association loops are used",
                pynetdicom.__version__,
                PYNETDICOM_VERSION,
            )
        server = cast(
            ThreadedAssociationServer,
            self.ae.make_server(
                (self.settings.listener_host, self.settings.listener_port),
                evt_handlers=handlers,
                ssl_context=build_tls_context(self.settings),
                server_class=server_class,
                **extra,
            ),
        )
        self._server = server
        self.ae._servers.append(server)  # so ae.shutdown() finds it, as start_server does
        threading.Thread(
            target=server.serve_forever, name="association-server", daemon=True
        ).start()
        if self.sweeper is not None:
            self.sweeper.start()
        logger.info(
            "listening as %s on %s:%d (TLS %s); allowed peers: %s",
            self.settings.listener_ae_title,
            self.settings.listener_host,
            self.settings.listener_port,
            "on" if server.ssl_context else "off",
            printable(", ".join(map(str, peers)) or "none", 1000),
        )

    def stop(self, drain_s: float = 10.0) -> None:
        """Stop accepting, let running associations finish (bounded), then flush the index."""
        if self._server is not None:
            self._server.shutdown()
        deadline = time.monotonic() + drain_s
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for association in self.ae.active_associations:
            association.abort()
        if self.sweeper is not None:
            self.sweeper.stop()
        self.refusals.stop()
        self.index_writer.stop()


def _wait_for_signal() -> int:
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    return received[0]


def serve(settings: Settings, run_sweeper: bool, reuse_port: bool) -> int:
    serve_metrics("listener", settings.metrics_port_listener, settings.metrics_host, LISTENER)
    process = ListenerProcess(settings, run_sweeper=run_sweeper, reuse_port=reuse_port)
    process.start()
    _wait_for_signal()
    logger.info("stopping")
    process.stop()
    return 0


def supervise(settings: Settings, processes: int, argv_overrides: list[str]) -> int:
    """Run `processes` serving children on one port and the sweeper here; restart dead children.
    Metrics: this process (the sweeper) on the configured port, child i on that port + i."""
    base = [sys.executable, "-m", "services.listener.main", "--serve-only", *argv_overrides]

    def child_command(index: int) -> list[str]:
        port = settings.metrics_port_listener
        return [*base, "--metrics-port", str(port + index + 1 if port else 0)]

    serve_metrics("listener", settings.metrics_port_listener, settings.metrics_host, LISTENER)
    children = [subprocess.Popen(child_command(i)) for i in range(processes)]
    sweeper = StabilitySweeper(
        settings.database_url, settings.stable_age_s, settings.stability_sweep_interval_s
    )
    sweeper.start()
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stopping.wait(1.0):
        for index, child in enumerate(children):
            if child.poll() is not None:
                logger.error(
                    "listener process %d exited (%s); restarting", child.pid, child.returncode
                )
                children[index] = subprocess.Popen(child_command(index))
    for child in children:
        child.terminate()
    for child in children:
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
    sweeper.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="medrega-pacs DICOM listener (Storage SCP)")
    parser.add_argument("--port", type=int, help="override MEDREGA_LISTENER_PORT")
    parser.add_argument("--processes", type=int, help="override MEDREGA_LISTENER_PROCESSES")
    parser.add_argument(
        "--serve-only", action="store_true", help="serve without sweeping (a supervised child)"
    )
    parser.add_argument(
        "--metrics-port", type=int, help="override MEDREGA_METRICS_PORT_LISTENER (0: off)"
    )
    args = parser.parse_args(argv)

    overrides: dict[str, object] = {}
    argv_overrides: list[str] = []
    if args.port is not None:
        overrides["listener_port"] = args.port
        argv_overrides += ["--port", str(args.port)]
    if args.metrics_port is not None:
        overrides["metrics_port_listener"] = args.metrics_port
    settings = get_settings().model_copy(update=overrides)
    processes = args.processes if args.processes is not None else settings.listener_processes

    # One record, one line (text or JSON): pynetdicom quotes the invalid UIDs and AE titles it
    # receives as they are; our own calls escape peer values themselves (log_safety.printable).
    configure_service_logging("listener", settings)
    # pynetdicom logs every PDU/DIMSE message at INFO/DEBUG: costly at our rates, and its dataset
    # dumps could carry PHI. Our own handlers log what matters.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # ... and its default event handlers format those messages even when nothing logs them.
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    # pydicom warns about non-conformant values by quoting them: names, IDs (PHI). Received data
    # is stored as received anyway, so these warnings carry nothing we act on.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")

    # Before the association threads start: a 17 MB X-ray arrives in buffers that size.
    keep_large_buffers()
    if args.serve_only:
        return serve(settings, run_sweeper=False, reuse_port=True)
    if processes > 1:
        return supervise(settings, processes, argv_overrides)
    return serve(settings, run_sweeper=True, reuse_port=False)


if __name__ == "__main__":
    raise SystemExit(main())
