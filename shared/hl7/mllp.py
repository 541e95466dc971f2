"""MLLP client: send one HL7 message, wait for its ACK, say plainly whether it was delivered.

Framing (HL7 MLLP release 1): 0x0B <message> 0x1C 0x0D, UTF-8 (MSH-18 says UNICODE UTF-8).
One message per connection: the connection is the unit of retry, and a half-read ACK from an
earlier attempt can never be mistaken for this one's.

Only MSA-1 AA (or CA, enhanced mode) with MSA-2 equal to our MSH-10 counts as delivered.
Everything else raises a `DeliveryError` subclass from errors.py whose `transient` flag tells the
delivery task whether to retry (see shared/delivery_policy.py).
"""

from __future__ import annotations

import socket
import ssl
import time

from shared.config import Settings, get_settings
from shared.hl7.ack import ERROR_CODES, REJECT_CODES, Ack, MalformedAck, parse_ack
from shared.hl7.er7 import Er7Error, read_er7
from shared.hl7.errors import (
    AckControlIdMismatch,
    AckError,
    AckRejected,
    GarbledAck,
    InvalidOru,
    RisTimeout,
    RisUnreachable,
)
from shared.tls import client_tls_context

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
MAX_ACK_BYTES = 1024 * 1024  # an ACK is a few hundred bytes; refuse to buffer a runaway peer


def frame(message: str) -> bytes:
    """Wrap an ER7 message (segments terminated by \\r) in an MLLP block."""
    body = message if message.endswith("\r") else message + "\r"
    return START_BLOCK + body.encode("utf-8") + END_BLOCK


def read_frame(sock: socket.socket, deadline: float, max_bytes: int = MAX_ACK_BYTES) -> bytes:
    """Read one MLLP block from `sock`; return its payload.

    `deadline` (time.monotonic()) bounds the *whole* read, so a peer trickling a byte at a time
    cannot hold a worker beyond the configured timeout. Raises RisTimeout or GarbledAck.
    """
    buffer = b""
    while True:
        start = buffer.find(START_BLOCK)
        if start > 0 and buffer[:start].strip():
            raise GarbledAck("data before the MLLP start block")
        if start < 0 and buffer.strip():
            raise GarbledAck("answer is not MLLP-framed (no start block)")
        if start >= 0:
            end = buffer.find(END_BLOCK, start + 1)
            if end >= 0:
                return buffer[start + 1 : end]
        if len(buffer) > max_bytes:
            raise GarbledAck(f"no MLLP end block within {max_bytes} bytes")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RisTimeout("no complete ACK within the read timeout")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise RisTimeout("no complete ACK within the read timeout") from None
        except OSError as exc:  # reset while waiting for the ACK
            raise RisUnreachable(f"connection lost while waiting for the ACK: {exc}") from None
        if not chunk:
            raise GarbledAck("RIS closed the connection before a complete ACK")
        buffer += chunk


def _control_id_of(message: str) -> str:
    try:
        control_id = read_er7(message).field("MSH", 10)
    except Er7Error as exc:
        raise InvalidOru(f"not an HL7 message: {exc}") from None
    if not control_id:
        raise InvalidOru("message has no MSH-10 control ID")
    return control_id


def check_ack(ack: Ack, control_id: str) -> Ack:
    """Return `ack` when it accepts `control_id`; raise the matching typed error otherwise."""
    if ack.control_id != control_id:
        raise AckControlIdMismatch(
            f"ACK names message {ack.control_id[:20]!r}, not {control_id!r}", ack_code=ack.code
        )
    detail = f"{ack.code}: {ack.text}" if ack.text else ack.code
    if ack.code in REJECT_CODES:
        raise AckRejected(detail, ack_code=ack.code)
    if ack.code in ERROR_CODES:
        raise AckError(detail, ack_code=ack.code)
    return ack


def send_message(
    message: str,
    *,
    host: str,
    port: int,
    timeout_s: float,
    connect_timeout_s: float | None = None,
    tls_context: ssl.SSLContext | None = None,
) -> Ack:
    """Send `message` over MLLP and return its accepting ACK.

    `timeout_s` bounds sending plus waiting for the complete ACK; `connect_timeout_s` (default:
    `timeout_s`) bounds the TCP connect and the TLS handshake. With `tls_context` the connection
    is TLS and the RIS's certificate must match `host`. Raises a DeliveryError subclass
    (errors.py) otherwise.
    """
    control_id = _control_id_of(message)
    payload = frame(message)
    sock = _connect(host, port, connect_timeout_s or timeout_s, tls_context)
    with sock:
        deadline = time.monotonic() + timeout_s
        try:
            sock.settimeout(timeout_s)
            sock.sendall(payload)
        except TimeoutError:
            raise RisTimeout("sending the message timed out") from None
        except OSError as exc:
            raise RisUnreachable(f"connection lost while sending: {exc}") from None
        raw = read_frame(sock, deadline)
    try:
        ack = parse_ack(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise GarbledAck("ACK is not valid UTF-8") from None
    except MalformedAck as exc:
        raise GarbledAck(f"unusable ACK: {exc}") from None
    return check_ack(ack, control_id)


def _connect(
    host: str, port: int, timeout_s: float, tls_context: ssl.SSLContext | None
) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except TimeoutError:
        raise RisUnreachable(f"connect to {host}:{port} timed out") from None
    except OSError as exc:  # refused, unreachable, DNS failure
        raise RisUnreachable(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    if tls_context is None:
        return sock
    try:
        return tls_context.wrap_socket(sock, server_hostname=host)  # handshake within timeout_s
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise RisUnreachable(
            f"TLS to {host}:{port}: certificate not trusted ({exc.verify_message})"
        ) from None
    except (TimeoutError, OSError) as exc:  # ssl.SSLError is an OSError
        sock.close()
        raise RisUnreachable(f"TLS handshake with {host}:{port} failed: {exc}") from None


def ris_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """MLLP over TLS when MEDREGA_RIS_TLS is on (CA, optional client certificate)."""
    if not settings.ris_tls:
        return None
    return client_tls_context(settings.ris_tls_ca, settings.ris_tls_cert, settings.ris_tls_key)


def send_oru(message: str, *, timeout_s: float | None = None) -> Ack:
    """`send_message` to the configured RIS (MEDREGA_RIS_HOST/PORT/TIMEOUT_S)."""
    settings = get_settings()
    return send_message(
        message,
        host=settings.ris_host,
        port=settings.ris_port,
        timeout_s=timeout_s if timeout_s is not None else settings.ris_timeout_s,
        tls_context=ris_tls_context(settings),
    )
