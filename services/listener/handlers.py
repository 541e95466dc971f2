"""pynetdicom event handlers: one `handle_<event>` per event, each returns a DICOM answer.

Handlers never raise into the association (pynetdicom would answer 0xC211 and log the traceback
with whatever it holds): they catch, log UIDs only (no PHI) and return a status. Whatever the
peer chose (AE title, UIDs) is logged through `printable`, so it cannot forge a log line. The
C-STORE handler stays thin: parse the header, write the bytes, hand the row to the index writer,
wait.
"""

from __future__ import annotations

import logging
import ssl
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from io import BytesIO
from typing import Any, cast

from pynetdicom import events
from pynetdicom.dimse_primitives import C_STORE

from services.listener.dataset_header import (
    IncompleteDatasetError,
    UndecodableDatasetError,
    read_header,
)
from services.listener.encoding import part10_header
from services.listener.indexer import IndexWriter, InstanceRecord
from services.listener.refusals import RefusalCounter
from services.listener.storage import ContentStore
from shared.listener_peers import (
    REFUSED_PEER,
    REFUSED_SCREENING_FAILED,
    REFUSED_STORAGE_LOW,
    PeerRule,
    admits,
)
from shared.log_safety import printable

logger = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # storage (disk, fsync, database) could not take it
STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # header's SOP Class/Instance ≠ the request
STATUS_CANNOT_UNDERSTAND = 0xC000  # decodable, but lacks valid Study/Series/SOP UIDs to file it
STATUS_CANNOT_DECODE = 0xC210  # the bytes are not a decodable dataset
STATUS_HANDLER_FAILED = 0xC211  # a bug of ours; logged with its traceback

# A-ASSOCIATE-RJ (result, source, reason), PS3.8 §9.3.4.
REJECT_CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)  # permanent, service-user
REJECT_LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)  # transient, service-provider (presentation)


@dataclass(frozen=True, slots=True)
class ListenerContext:
    store: ContentStore
    index_writer: IndexWriter
    # AE title AND address (or client certificate) per allowed peer (shared/listener_peers.py).
    allowed_peers: tuple[PeerRule, ...]
    refusals: RefusalCounter
    # Longer than a healthy group commit by far, shorter than a typical SCU's DIMSE timeout (30 s)
    # so the peer gets our 0xA700 rather than timing out.
    index_timeout_s: float = 20.0


def _peer_certificate(event: events.Event) -> dict[str, Any] | None:
    """The peer's verified TLS certificate, when the association runs over TLS with one."""
    raw = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if isinstance(raw, ssl.SSLSocket):
        return cast(dict[str, Any] | None, raw.getpeercert())
    return None


def handle_requested(event: events.Event, context: ListenerContext) -> None:
    """EVT_REQUESTED: refuse peers not allowed (AE title and address or certificate), and refuse
    everyone when the disk is low. Every refusal is logged (escaped) and counted."""
    calling_ae = remote_addr = "?"
    try:
        request = event.assoc.requestor.primitive
        calling_ae = request.calling_ae_title.strip() if request is not None else ""
        remote_addr = event.assoc.requestor.address
        if not admits(context.allowed_peers, calling_ae, remote_addr, _peer_certificate(event)):
            logger.warning(
                "association from calling AE '%s' at %s refused: not an allowed peer",
                printable(calling_ae),
                printable(remote_addr),
            )
            context.refusals.count(REFUSED_PEER, remote_addr, calling_ae)
            _reject(event, REJECT_CALLING_AE_NOT_RECOGNISED)
            return
        if not context.store.has_free_space():
            logger.error(
                "association from '%s' at %s refused: storage below its free-space watermark",
                printable(calling_ae),
                printable(remote_addr),
            )
            context.refusals.count(REFUSED_STORAGE_LOW, remote_addr, calling_ae)
            _reject(event, REJECT_LOCAL_LIMIT_EXCEEDED)
    except Exception:
        logger.exception("association screening failed; refusing")
        context.refusals.count(REFUSED_SCREENING_FAILED, remote_addr, calling_ae)
        try:
            _reject(event, REJECT_LOCAL_LIMIT_EXCEEDED)
        except Exception:
            event.assoc.abort()


def _reject(event: events.Event, reason: tuple[int, int, int]) -> None:
    event.assoc.acse.send_reject(*reason)
    # As pynetdicom's own ACSE rejection does: wait until the DUL has sent the A-ASSOCIATE-RJ,
    # otherwise the server closes the socket first and the peer sees a bare abort.
    event.assoc.kill()


def handle_echo(event: events.Event) -> int:
    """EVT_C_ECHO: verification always succeeds while we run."""
    return STATUS_SUCCESS


def handle_store(event: events.Event, context: ListenerContext) -> int:
    """EVT_C_STORE: 0x0000 only once the file and its rows are durable."""
    try:
        return _store(event, context)
    except Exception:
        logger.exception("C-STORE handler failed")
        return STATUS_HANDLER_FAILED


def _part10_bytes(event: events.Event, request: C_STORE) -> bytes:
    """The received dataset behind pynetdicom's File Meta Information: the bytes of
    `event.encoded_dataset(include_meta=True)`, packed without pydicom."""
    dataset = cast(BytesIO, request.DataSet).getvalue()
    try:
        header = part10_header(
            str(request.AffectedSOPClassUID),
            str(request.AffectedSOPInstanceUID),
            str(event.context.transfer_syntax),
        )
    except UnicodeEncodeError:
        return event.encoded_dataset(include_meta=True)  # let pydicom encode what it can
    return header + dataset


def _store(event: events.Event, context: ListenerContext) -> int:
    request = cast(C_STORE, event.request)
    requested_instance = str(request.AffectedSOPInstanceUID)
    logged_instance = printable(requested_instance)  # chosen by the peer
    if not context.store.has_free_space():
        logger.error("C-STORE %s refused: storage below its watermark", logged_instance)
        return STATUS_OUT_OF_RESOURCES

    data = _part10_bytes(event, request)  # as received: no decode, no re-encode
    try:
        header = read_header(data)
    except UndecodableDatasetError as exc:
        logger.warning("C-STORE %s: undecodable dataset (%s)", logged_instance, printable(exc))
        return STATUS_CANNOT_DECODE
    except IncompleteDatasetError as exc:
        logger.warning("C-STORE %s: %s", logged_instance, printable(exc))
        return STATUS_CANNOT_UNDERSTAND

    if (
        header.sop_class_uid != str(request.AffectedSOPClassUID)
        or header.sop_instance_uid != requested_instance
    ):
        logger.warning(
            "C-STORE %s: dataset SOP Class/Instance (%s/%s) disagree with the request (%s)",
            logged_instance,
            printable(header.sop_class_uid),
            printable(header.sop_instance_uid),
            printable(request.AffectedSOPClassUID),
        )
        return STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS

    try:
        stored = context.store.write(
            header.study_instance_uid,
            header.series_instance_uid,
            header.sop_instance_uid,
            data,
            sync_directory=False,  # the index writer fsyncs it with its batch, before commit
        )
    except OSError:
        logger.exception("C-STORE %s: writing to storage failed", logged_instance)
        return STATUS_OUT_OF_RESOURCES

    record = InstanceRecord(
        header=header,
        stored=stored,
        transfer_syntax_uid=str(event.context.transfer_syntax),
        calling_ae_title=event.assoc.requestor.ae_title.strip() or None,
        directory_to_sync=context.store.directory_of(stored),
    )
    try:
        outcome = context.index_writer.submit(record).result(timeout=context.index_timeout_s)
    except FutureTimeoutError:
        # The row may still commit later; the sender's retry is then a harmless duplicate.
        logger.error("C-STORE %s: index write timed out", logged_instance)
        return STATUS_OUT_OF_RESOURCES
    except Exception:
        logger.exception("C-STORE %s: index write failed", logged_instance)
        return STATUS_OUT_OF_RESOURCES
    logger.debug("C-STORE %s: %s", logged_instance, outcome)
    return STATUS_SUCCESS
