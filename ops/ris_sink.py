"""A stand-in RIS: an MLLP server that stores each HL7 message and acknowledges it.

    python -m ops.ris_sink --port 2575 --out var/ris-inbox [--reply AA|AE|AR] [--fail-first N]
                           [--stall-s S] [--bad-ack none|wrong-control-id|garbled]
                           [--tls-cert C --tls-key K [--tls-client-ca CA]]
                           [--expect-sending-app ER7] [--expect-receiving-facility ER7] …
                           [--expect-patient-authority ER7] [--expect-procedure CODE^SCHEME]…

With `--tls-cert/--tls-key` it serves MLLP over TLS only; `--tls-client-ca` also requires each
sender to present a certificate that CA signed (mutual TLS).

Every accepted message is written to `<out>/<MSH-10>.hl7` (the exact bytes received), atomically;
a re-sent control ID overwrites the same file, like a RIS that de-duplicates on MSH-10, so
"delivered once per version" is checkable by counting files. Messages answered AE/AR are not
stored (the RIS did not take them).

Fault injection for tests and demos, applied to the first N messages (`--fail-first N`; every
message when N is not given): answer `--reply` instead of AA, wait `--stall-s` seconds before
answering (the message is stored: a slow RIS that did process it), or send a `--bad-ack`.

Interface-engine checks (`--expect-*`, ops/ris_checks.py): MSH-3..6, the PID-3 assigning
authority and the OBR-4 procedure code are compared with what this RIS expects; a mismatch is
answered AR (envelope) or AE (content) naming the field, and the message is not stored.

The log line names the control ID, message type, OBR-25 and sizes — never patient data.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Literal

from hl7apy.mllp import MLLPRequestHandler, MLLPServer

from ops.ris_checks import RisExpectations, check_message
from shared.hl7.ack import build_ack
from shared.hl7.er7 import Er7Error, read_er7
from shared.hl7.mllp import END_BLOCK, START_BLOCK, frame
from shared.observability.logs import configure_logging, log_format_from_env

log = logging.getLogger("ris_sink")

ReplyCode = Literal["AA", "AE", "AR"]
BadAck = Literal["none", "wrong-control-id", "garbled"]
# Control IDs become file names: nothing that could climb out of the inbox or hide a file.
_SAFE_CONTROL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class SinkBehaviour:
    reply: ReplyCode = "AA"
    fail_first: int | None = None  # None: the faults below apply to every message
    stall_s: float = 0.0
    bad_ack: BadAck = "none"
    # What this RIS checks in every message (ops/ris_checks.py); a mismatch is NAKed (AR/AE)
    # and not stored, whatever the fault injection says.
    expect: RisExpectations = RisExpectations()

    def faulty(self, index: int) -> bool:
        return self.fail_first is None or index < self.fail_first


class _SinkServer(MLLPServer):
    daemon_threads = True  # a stalled handler must not keep the process alive
    block_on_close = False

    def __init__(
        self,
        host: str,
        port: int,
        out_dir: Path,
        behaviour: SinkBehaviour,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.out_dir = out_dir
        self.behaviour = behaviour
        self.tls_context = tls_context
        self._count = 0
        self._lock = threading.Lock()
        super().__init__(host, port, handlers={}, timeout=60, request_handler_class=_SinkHandler)

    def get_request(self) -> tuple[socket.socket, object]:
        sock, address = super().get_request()
        if self.tls_context is None:
            return sock, address
        # The handshake runs on the handler's first read, in its own thread: a slow or plain-TCP
        # client cannot stall the accept loop.
        return self.tls_context.wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False
        ), address

    def next_index(self) -> int:
        with self._lock:
            index = self._count
            self._count += 1
            return index


class _SinkHandler(MLLPRequestHandler):
    """Reads any number of MLLP blocks per connection (hl7apy's handler takes one)."""

    server: _SinkServer

    def handle(self) -> None:
        self.request.settimeout(self.server.timeout)
        buffer = b""
        while True:
            try:
                chunk = self.request.recv(65536)
            except OSError:  # idle timeout or reset
                return
            if not chunk:
                return
            buffer += chunk
            while True:
                start = buffer.find(START_BLOCK)
                if start < 0:
                    buffer = b""  # noise between blocks: not a message, nothing to answer
                    break
                end = buffer.find(END_BLOCK, start + 1)
                if end < 0:
                    buffer = buffer[start:]
                    if len(buffer) > _MAX_MESSAGE_BYTES:
                        log.warning(
                            "dropping connection: MLLP block larger than %d bytes",
                            _MAX_MESSAGE_BYTES,
                        )
                        return
                    break
                payload, buffer = buffer[start + 1 : end], buffer[end + len(END_BLOCK) :]
                reply = self._process(payload)
                try:
                    self.request.sendall(reply)
                except OSError:  # the sender gave up (e.g. after its timeout while we stalled)
                    log.info("sender went away before the ACK")
                    return

    def _process(self, payload: bytes) -> bytes:
        behaviour = self.server.behaviour
        index = self.server.next_index()
        faulty = behaviour.faulty(index)
        try:
            text = payload.decode("utf-8")
            message = read_er7(text)
        except (UnicodeDecodeError, Er7Error) as exc:
            log.info(
                "received #%d unreadable (%s) bytes=%d reply=AR",
                index,
                type(exc).__name__,
                len(payload),
            )
            return frame(build_ack("AR", "", text="message is not UTF-8 HL7"))
        control_id = message.field("MSH", 10)
        message_type = "^".join(message.field("MSH", 9, c) for c in (1, 2)).strip("^")
        sender = message.field("MSH", 3)
        receiver = message.field("MSH", 5) or "RIS_SINK"
        event = message.field("MSH", 9, 2) or "R01"
        if not _SAFE_CONTROL_ID.match(control_id):
            log.info("received #%d with an unusable control ID reply=AR", index)
            return frame(
                build_ack("AR", control_id, text="invalid MSH-10", sending_application=receiver)
            )

        mismatch = check_message(message, behaviour.expect)
        if mismatch is not None:
            log.info(
                "received #%d control_id=%s reply=%s: %s",
                index, control_id, mismatch.code, mismatch.text,
            )  # fmt: skip
            nak = build_ack(
                mismatch.code,
                control_id,
                text=mismatch.text,
                sending_application=receiver,
                receiving_application=sender,
                trigger_event=event,
            )
            return frame(nak)
        code: ReplyCode = behaviour.reply if faulty else "AA"
        if faulty and behaviour.stall_s > 0:
            time.sleep(behaviour.stall_s)
        if code == "AA":
            self._store(control_id, payload)
        observations = sum(1 for s in message.segments if s[0] == "OBX")
        log.info(
            "received #%d control_id=%s type=%s obr25=%s obx=%d bytes=%d reply=%s",
            index,
            control_id,
            message_type,
            message.field("OBR", 25) or "-",
            observations,
            len(payload),
            code,
        )
        if faulty and behaviour.bad_ack == "garbled":
            return START_BLOCK + b"THIS IS NOT AN HL7 ACK" + END_BLOCK
        acknowledged = control_id
        if faulty and behaviour.bad_ack == "wrong-control-id":
            acknowledged = "X" + control_id
        text = {
            "AA": "",
            "AE": "RIS sink: simulated application error",
            "AR": "RIS sink: simulated reject",
        }[code]
        ack = build_ack(
            code,
            acknowledged,
            text=text,
            sending_application=receiver,
            receiving_application=sender,
            trigger_event=event,
        )
        return frame(ack)

    def _store(self, control_id: str, payload: bytes) -> None:
        out_dir = self.server.out_dir
        # Unique temp name + rename: concurrent re-sends of one control ID never interleave.
        fd, tmp = tempfile.mkstemp(prefix=f".{control_id}.", suffix=".tmp", dir=out_dir)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, out_dir / f"{control_id}.hl7")


class RisSink:
    """The sink as an object: start it in a thread (tests), or `serve_forever` (the CLI)."""

    def __init__(
        self,
        out_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        behaviour: SinkBehaviour | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self._server = _SinkServer(host, port, out_dir, behaviour or SinkBehaviour(), tls_context)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def out_dir(self) -> Path:
        return self._server.out_dir

    @property
    def received(self) -> int:
        return self._server._count

    def start(self) -> RisSink:
        self._thread = threading.Thread(target=self.serve_forever, name="ris-sink", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.1)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> RisSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def server_tls_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """TLS 1.2+ with our certificate; with `client_ca`, senders must present one it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=client_ca)
    return context


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.ris_sink", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2575, help="0 picks a free port")
    parser.add_argument("--out", type=Path, default=Path("var/ris-inbox"))
    parser.add_argument("--reply", choices=["AA", "AE", "AR"], default="AA")
    parser.add_argument("--fail-first", type=int, default=None, metavar="N")
    parser.add_argument("--stall-s", type=float, default=0.0, metavar="S")
    parser.add_argument(
        "--bad-ack", choices=["none", "wrong-control-id", "garbled"], default="none"
    )
    parser.add_argument("--tls-cert", type=Path, help="serve MLLP over TLS with this PEM")
    parser.add_argument("--tls-key", type=Path)
    parser.add_argument("--tls-client-ca", type=Path, help="require client certificates")
    for option, what in (
        ("sending-app", "MSH-3"),
        ("sending-facility", "MSH-4"),
        ("receiving-app", "MSH-5"),
        ("receiving-facility", "MSH-6"),
        ("patient-authority", "PID-3.4 (sub-components joined by &)"),
    ):
        parser.add_argument(f"--expect-{option}", metavar="ER7", help=f"NAK unless {what} is this")
    parser.add_argument(
        "--expect-procedure",
        action="append",
        default=[],
        metavar="CODE^SCHEME",
        help="an OBR-4 this RIS accepts (repeatable); none given: any",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        parser.error("--tls-client-ca needs --tls-cert/--tls-key")
    configure_logging(
        "ris-sink",
        log_format_from_env(),
        args.log_level.upper(),
        text_format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )

    behaviour = SinkBehaviour(
        reply=args.reply,
        fail_first=args.fail_first,
        stall_s=args.stall_s,
        bad_ack=args.bad_ack,
        expect=RisExpectations(
            sending_application=args.expect_sending_app,
            sending_facility=args.expect_sending_facility,
            receiving_application=args.expect_receiving_app,
            receiving_facility=args.expect_receiving_facility,
            patient_id_authority=args.expect_patient_authority,
            procedure_codes=frozenset(args.expect_procedure),
        ),
    )
    try:
        tls = (
            server_tls_context(args.tls_cert, args.tls_key, args.tls_client_ca)
            if args.tls_cert
            else None
        )
        sink = RisSink(
            args.out, host=args.host, port=args.port, behaviour=behaviour, tls_context=tls
        )
    except OSError as exc:  # ssl.SSLError (an unusable certificate) is an OSError too
        log.error("cannot listen on %s:%d: %s", args.host, args.port, exc)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sink.start()
    # One parseable line on stdout for scripts and tests (the port matters with --port 0).
    scheme = "MLLP/TLS" if tls else "MLLP"
    print(f"RIS sink listening on {sink.host}:{sink.port} ({scheme}) out={args.out}", flush=True)
    stop.wait()
    sink.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
