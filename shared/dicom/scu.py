"""C-STORE one dataset to a peer AE (our SR to the PACS), with timeouts and typed failures.

A delivery task retries only `TransientStoreError` (the peer is down, busy, slow or out of
resources); a `PermanentStoreError` (the peer refuses the SOP class, rejects the association
permanently, or says the dataset is wrong) will fail the same way next time, so it is recorded
and surfaced instead.
"""

from __future__ import annotations

import logging
import ssl

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

from shared.config import Settings
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
) -> int:
    """Send `ds` by C-STORE and return the DIMSE status (0x0000, or a warning status).

    `timeout_s` bounds each phase separately: TCP connect, association negotiation (ACSE),
    the wait for the C-STORE response (DIMSE) and network idle time. Raises
    `TransientStoreError` or `PermanentStoreError` otherwise. With `tls_context` the
    association runs over TLS and the peer's certificate must match `host`.
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
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = timeout_s
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    # Explicit VR Little Endian first (what we encode); Implicit VR Little Endian is the one
    # syntax every SCP must accept, and pynetdicom re-encodes to it if that is what is agreed.
    ae.add_requested_context(ds.SOPClassUID, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])

    tls_args = (tls_context, host) if tls_context is not None else None
    assoc = ae.associate(host, port, ae_title=ae_title, tls_args=tls_args)
    try:
        if not assoc.is_established:
            raise _association_failure(assoc, peer)
        try:
            response = assoc.send_c_store(ds)
        except RuntimeError as exc:
            # The peer released or aborted between negotiation and our request.
            raise TransientStoreError(f"association lost before C-STORE: {exc}", peer=peer) from exc
        if "Status" not in response:
            # No response within the DIMSE timeout, or the association was aborted meanwhile.
            raise TransientStoreError("no C-STORE response (timeout or abort)", peer=peer)
        status = int(response.Status)
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()

    error = classify_status(status)
    if error is not None:
        raise error("C-STORE failed", peer=peer, status=status)
    if status != SUCCESS:
        logger.warning("C-STORE to %s stored with warning status 0x%04X", peer, status)
    return status


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
