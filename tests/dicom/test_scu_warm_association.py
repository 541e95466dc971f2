"""Warm associations (store_dataset keep_warm=True) against real pynetdicom SCPs: consecutive
C-STOREs share one association; one the peer dropped while idle is replaced without an error; an
idle one is released after the pool's idle time; without keep_warm nothing is kept."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from shared.dicom.association_pool import POOL
from shared.dicom.scu import PermanentStoreError, store_dataset
from tests.dicom.test_scu import free_port, sr  # noqa: F401  (sr is a fixture)


class CountingSCP:
    """A Storage SCP that records every association it accepted and every instance stored."""

    def __init__(self, *, network_timeout: float | None = None, sop_class: str = "") -> None:
        self.associations = 0
        self.released = 0
        self.received: list[str] = []
        ae = AE(ae_title="PACS")
        ae.add_supported_context(sop_class or Comprehensive3DSRStorage, [ImplicitVRLittleEndian])
        ae.network_timeout = network_timeout  # the SCP drops an idle association after this
        self.port = free_port()
        server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[
                (evt.EVT_C_STORE, self._store),
                (evt.EVT_ESTABLISHED, self._established),
                (evt.EVT_RELEASED, self._released),
            ],
        )
        assert server is not None
        self.server: ThreadedAssociationServer = server

    def _store(self, event: evt.Event) -> int:
        self.received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    def _established(self, event: evt.Event) -> None:
        self.associations += 1

    def _released(self, event: evt.Event) -> None:
        self.released += 1


@pytest.fixture
def clean_pool() -> Iterator[None]:
    POOL.close_idle()
    yield
    POOL.close_idle()


def copy_of(sr: Dataset) -> Dataset:  # noqa: F811
    """The SR under a new SOP Instance UID (another object for the same peer)."""
    other = copy.deepcopy(sr)
    other.SOPInstanceUID = generate_uid()
    other.file_meta.MediaStorageSOPInstanceUID = other.SOPInstanceUID
    return other


def wait_until(condition: object, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.05)
    return False


def test_consecutive_stores_share_one_warm_association(sr: Dataset, clean_pool: None) -> None:  # noqa: F811
    scp = CountingSCP()
    try:
        objects = [sr, copy_of(sr), copy_of(sr)]
        for ds in objects:
            assert (
                store_dataset(ds, "PACS", "127.0.0.1", scp.port, timeout_s=5, keep_warm=True) == 0
            )
        assert scp.received == [ds.SOPInstanceUID for ds in objects]
        assert scp.associations == 1
        assert POOL.idle_count() == 1
        # Idle past the pool's idle time: released by the reaper (A-RELEASE, not an abort).
        assert wait_until(lambda: scp.released == 1)
        assert POOL.idle_count() == 0
    finally:
        scp.server.shutdown()


def test_an_association_the_peer_dropped_is_replaced(sr: Dataset, clean_pool: None) -> None:  # noqa: F811
    scp = CountingSCP()
    try:
        store_dataset(sr, "PACS", "127.0.0.1", scp.port, timeout_s=5, keep_warm=True)
        assert POOL.idle_count() == 1
        # The peer aborts our idle association (its idle timer, a restart): done here by the
        # SCP itself once the store is over, not by a timer racing the first C-STORE.
        for association in scp.server.active_associations:
            association.abort()
        assert wait_until(lambda: not scp.server.active_associations)
        other = copy_of(sr)
        assert store_dataset(other, "PACS", "127.0.0.1", scp.port, timeout_s=5, keep_warm=True) == 0
        assert scp.received == [sr.SOPInstanceUID, other.SOPInstanceUID]
        assert scp.associations == 2
    finally:
        scp.server.shutdown()


def test_without_keep_warm_nothing_is_kept(sr: Dataset, clean_pool: None) -> None:  # noqa: F811
    scp = CountingSCP()
    try:
        store_dataset(sr, "PACS", "127.0.0.1", scp.port, timeout_s=5)
        store_dataset(copy_of(sr), "PACS", "127.0.0.1", scp.port, timeout_s=5)
        assert scp.associations == 2
        assert scp.released == 2
        assert POOL.idle_count() == 0
    finally:
        scp.server.shutdown()


def test_a_warm_association_still_refuses_a_class_the_peer_does_not_take(
    sr: Dataset,  # noqa: F811
    clean_pool: None,
) -> None:
    """The pool offers SR, GSPS and KOS; a peer that takes only GSPS accepts the association but
    not our SR: that is permanent, and nothing is kept."""
    from pydicom.uid import GrayscaleSoftcopyPresentationStateStorage as GSPS

    scp = CountingSCP(sop_class=GSPS)
    try:
        with pytest.raises(PermanentStoreError, match="presentation context"):
            store_dataset(sr, "PACS", "127.0.0.1", scp.port, timeout_s=5, keep_warm=True)
        assert POOL.idle_count() == 0
    finally:
        scp.server.shutdown()
