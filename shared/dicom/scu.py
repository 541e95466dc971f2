"""C-STORE one dataset to a peer AE (our SR to the PACS), with timeouts and typed failures.

A delivery task retries only `TransientStoreError` (the peer is down, busy, slow or out of
resources); a `PermanentStoreError` (the peer refuses the SOP class, rejects the association
permanently, or says the dataset is wrong) will fail the same way next time, so it is recorded
and surfaced instead.

With `keep_warm` the association stays open for the next C-STORE to the same peer (for two
seconds: association_pool.py). A warm association the peer closed while idle fails fast; that
C-STORE is then tried once more on a fresh association (the same UIDs: a re-sent object replaces
itself at the PACS).
"""

from __future__ import annotations

import logging
import ssl
import time

from pydicom.dataset import Dataset
from pynetdicom.association import Association

from shared.config import Settings
from shared.dicom.association_pool import (
    DELIVERY_SOP_CLASSES,
    POOL,
    PeerKey,
    WarmAssociation,
    open_association,
)
from shared.tls import client_tls_context

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
# C-STORE warnings (PS3.4 B.2.3): stored, with coercion or elements discarded.
WARNING_STATUSES = frozenset({0x0001, 0xB000, 0xB006, 0xB007})
# Failures worth retrying: the peer ran out of resources or failed while processing; both
# describe the peer's state, not our dataset.
TRANSIENT_FAILURE_STATUSES = frozenset({0x0110, 0x0213})


class StoreError(Exception):
    """A C-STORE did not end with the dataset stored at the peer."""

    transient: bool = False

    def __init__(self, message: str, *, peer: str, status: int | None = None) -> None:
        detail = f" (status 0x{status:04X})" if status is not None else ""
        super().__init__(f"{peer}: {message}{detail}")
        self.peer = peer
        self.status = status


class TransientStoreError(StoreError):
    """Worth retrying later: connection refused or timed out, association rejected
    (transient) or aborted, no response in time, status 0xA7xx (out of resources)."""

    transient = True


class PermanentStoreError(StoreError):
    """Retrying will not help: association rejected (permanent), SOP class not accepted,
    status 0xA9xx (dataset does not match SOP class), 0xCxxx (cannot understand) and other
    refusals."""


def classify_status(status: int) -> type[StoreError] | None:
    """None for success or a warning; otherwise the error class for a C-STORE status."""
    if status == SUCCESS or status in WARNING_STATUSES:
        return None
    if 0xA700 <= status <= 0xA7FF or status in TRANSIENT_FAILURE_STATUSES:
        return TransientStoreError
    return PermanentStoreError


def pacs_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """DICOM TLS to the PACS when MEDREGA_PACS_TLS is on (CA, optional client certificate)."""
    if not settings.pacs_tls:
        return None
    return client_tls_context(settings.pacs_tls_ca, settings.pacs_tls_cert, settings.pacs_tls_key)


def store_dataset(
    ds: Dataset,
    ae_title: str,
    host: str,
    port: int,
    *,
    calling_ae: str = "MEDREGA",
    timeout_s: float = 30.0,
    tls_context: ssl.SSLContext | None = None,
    keep_warm: bool = False,
) -> int:
    """Send `ds` by C-STORE and return the DIMSE status (0x0000, or a warning status).

    `timeout_s` bounds each phase separately: TCP connect, association negotiation (ACSE),
    the wait for the C-STORE response (DIMSE) and network idle time. Raises
    `TransientStoreError` or `PermanentStoreError` otherwise. With `tls_context` the
    association runs over TLS and the peer's certificate must match `host`. With `keep_warm`
    the association is taken from and given back to the pool (module docstring).
    """
    _check_ae_title("Called AE Title", ae_title)
    _check_ae_title("Calling AE Title", calling_ae)
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1..65535, got {port}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        if keyword not in ds:
            raise ValueError(f"dataset has no {keyword}; it cannot be stored")
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", Dataset()):
        raise ValueError("dataset has no file meta TransferSyntaxUID (0002,0010)")

    peer = f"{ae_title}@{host}:{port}"
    key: PeerKey = (calling_ae, ae_title, host, port, tls_context is not None)
    sop_class = str(ds.SOPClassUID)
    status: int | None = None
    if keep_warm:
        warm = POOL.take(key, sop_class)
        if warm is not None:
            started = time.monotonic()
            try:
                status = _send(warm.assoc, ds, peer)
                POOL.give_back(key, warm)
            except TransientStoreError:
                warm.close()
                # Lost at once: the peer had closed it while idle; a fresh one follows. Lost
                # after a while (no response in time): the peer is slow; that is the answer.
                if time.monotonic() - started > min(timeout_s / 2, 5.0):
                    raise
                logger.info("warm association to %s was closed by the peer; opening anew", peer)
            except BaseException:
                warm.close()  # e.g. a dataset pynetdicom can't encode: never back to the pool
                raise
    if status is None:
        status = _store_fresh(ds, key, peer, timeout_s, tls_context, keep_warm)

    error = classify_status(status)
    if error is not None:
        raise error("C-STORE failed", peer=peer, status=status)
    if status != SUCCESS:
        logger.warning("C-STORE to %s stored with warning status 0x%04X", peer, status)
    return status


def _store_fresh(
    ds: Dataset,
    key: PeerKey,
    peer: str,
    timeout_s: float,
    tls_context: ssl.SSLContext | None,
    keep_warm: bool,
) -> int:
    """C-STORE over a new association; released after, or given to the pool with `keep_warm`."""
    sop_class = str(ds.SOPClassUID)
    offered = [sop_class, *DELIVERY_SOP_CLASSES] if keep_warm else [sop_class]
    ae, assoc = open_association(key, offered, timeout_s, tls_context)
    kept: WarmAssociation | None = None
    try:
        if not assoc.is_established:
            raise _association_failure(assoc, peer)
        accepted = frozenset(str(cx.abstract_syntax) for cx in assoc.accepted_contexts)
        if sop_class not in accepted:
            # Others of the offered classes were accepted, not this one.
            raise PermanentStoreError(
                "no presentation context accepted for the SOP class", peer=peer
            )
        status = _send(assoc, ds, peer)
        if keep_warm:
            kept = WarmAssociation(ae, assoc, accepted)
    finally:
        if kept is not None:
            POOL.give_back(key, kept)
        else:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()
    return status


def _send(assoc: Association, ds: Dataset, peer: str) -> int:
    """The C-STORE on an established association: its DIMSE status."""
    try:
        response = assoc.send_c_store(ds)
    except RuntimeError as exc:
        # The peer released or aborted between negotiation and our request.
        raise TransientStoreError(f"association lost before C-STORE: {exc}", peer=peer) from exc
    if "Status" not in response:
        # No response within the DIMSE timeout, or the association was aborted meanwhile.
        raise TransientStoreError("no C-STORE response (timeout or abort)", peer=peer)
    return int(response.Status)


def _association_failure(assoc: Association, peer: str) -> StoreError:
    response = assoc.acceptor.primitive
    if assoc.is_rejected and response is not None:
        why = f"association rejected: {response.result_str}, {response.source_str}, {response.reason_str}"
        # A-ASSOCIATE-RJ result 0x02 is 'rejected (transient)', e.g. too many associations.
        if response.result == 0x02:
            return TransientStoreError(why, peer=peer)
        return PermanentStoreError(why, peer=peer)
    if response is not None and response.result == 0x00:
        # Accepted, but not our presentation context: the peer does not take this SOP class.
        return PermanentStoreError("no presentation context accepted for the SOP class", peer=peer)
    # Connection refused or timed out, ACSE timeout, aborted during negotiation.
    return TransientStoreError(
        "association not established (connection failed or aborted)", peer=peer
    )


def _check_ae_title(name: str, value: str) -> None:
    if not value.strip() or len(value) > 16 or "\\" in value or not value.isprintable():
        raise ValueError(f"{name} must be 1-16 printable characters without '\\', got {value!r}")
