"""Warm associations to a PACS: a C-STORE over one skips the TCP connect, the association
negotiation and the release that a fresh association costs.

A delivery worker sends each abnormal study's SR, GSPS and KOS one after another to the same
peer; with a pool they go over one association. An association is kept only while it is busy or
was used within `idle_s` (2 s): a reaper thread releases it after that. A short idle time is
what keeps this safe with a PACS that serves one association at a time (DCMTK's storescp
without --fork): a held association blocks other senders there only for those two seconds after
a burst. Several threads each get their own association; an idle one is given to one thread at
a time.

An association is offered every SOP class deliveries send (SR, GSPS, KOS) so one serves them
all; `take` finds an idle one that accepted the dataset's class. Callers own error handling: a
pooled association the peer closed while it was idle fails its next use, and scu.py then tries
once more on a fresh one.
"""

from __future__ import annotations

import atexit
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom.uid import (
    BasicTextSRStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    ImplicitVRLittleEndian,
    KeyObjectSelectionDocumentStorage,
)
from pynetdicom import AE
from pynetdicom.association import Association

logger = logging.getLogger(__name__)

# The SOP classes our deliveries send, offered on every pooled association.
DELIVERY_SOP_CLASSES = (
    ComprehensiveSRStorage,
    Comprehensive3DSRStorage,
    EnhancedSRStorage,
    BasicTextSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
)
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]

# (calling AE, called AE, host, port, TLS or not)
PeerKey = tuple[str, str, str, int, bool]


@dataclass
class WarmAssociation:
    ae: AE
    assoc: Association
    accepted: frozenset[str]  # SOP classes the peer accepted
    last_used: float = field(default_factory=time.monotonic)

    @property
    def alive(self) -> bool:
        return bool(self.assoc.is_established) and self.assoc.dul.is_alive()

    def close(self) -> None:
        try:
            if self.assoc.is_established:
                self.assoc.release()
        except Exception:  # the peer went away meanwhile: nothing left to release
            logger.debug("releasing a pooled association failed", exc_info=True)
        finally:
            self.ae.shutdown()


def open_association(
    key: PeerKey,
    sop_classes: Iterable[str],
    timeout_s: float,
    tls_context: ssl.SSLContext | None,
) -> tuple[AE, Association]:
    """A new association to the peer of `key`, offering `sop_classes` (established or not)."""
    calling_ae, ae_title, host, port, _ = key
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = timeout_s
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    # Explicit VR Little Endian first (what we encode); Implicit VR Little Endian is the one
    # syntax every SCP must accept, and pynetdicom re-encodes to it if that is what is agreed.
    for sop_class in dict.fromkeys(sop_classes):
        ae.add_requested_context(sop_class, TRANSFER_SYNTAXES)
    tls_args = (tls_context, host) if tls_context is not None else None
    assoc = ae.associate(host, port, ae_title=ae_title, tls_args=tls_args)
    _no_delay(assoc)
    return ae, assoc


def _no_delay(assoc: Association) -> None:
    """Disable Nagle on the association's socket. pynetdicom writes a C-STORE's command and its
    dataset as separate PDUs; with Nagle the second waits for the peer's delayed ACK of the
    first (about 40 ms on Linux) on every C-STORE. The listener does the same on its side."""
    raw = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if raw is None:
        return  # not connected (refused, timed out): the caller reports it
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # the connection went away meanwhile; the C-STORE will say so


class AssociationPool:
    def __init__(self, idle_s: float = 2.0, max_idle_per_peer: int = 4) -> None:
        self.idle_s = idle_s
        self.max_idle_per_peer = max_idle_per_peer
        self._idle: dict[PeerKey, list[WarmAssociation]] = {}
        self._lock = threading.Lock()
        self._reaper: threading.Thread | None = None

    def take(self, key: PeerKey, sop_class: str) -> WarmAssociation | None:
        """An idle, live association to the peer that accepted `sop_class`, now the caller's."""
        dead: list[WarmAssociation] = []
        found: WarmAssociation | None = None
        with self._lock:
            idle = self._idle.get(key, [])
            for index in range(len(idle) - 1, -1, -1):  # the most recently used first
                warm = idle[index]
                if not warm.alive:  # the peer closed it while it was idle
                    dead.append(idle.pop(index))
                elif sop_class in warm.accepted:
                    found = idle.pop(index)
                    break
        for warm in dead:
            warm.close()
        return found

    def give_back(self, key: PeerKey, warm: WarmAssociation) -> None:
        """The caller is done with `warm`; keep it for the next C-STORE, or release it."""
        if not warm.alive:
            warm.close()
            return
        warm.last_used = time.monotonic()
        surplus: WarmAssociation | None = None
        with self._lock:
            idle = self._idle.setdefault(key, [])
            idle.append(warm)
            if len(idle) > self.max_idle_per_peer:
                surplus = idle.pop(0)
            self._start_reaper()
        if surplus is not None:
            surplus.close()

    def close_idle(self, older_than_s: float | None = None) -> int:
        """Release idle associations unused for `older_than_s` (all of them with None)."""
        now = time.monotonic()
        expired: list[WarmAssociation] = []
        with self._lock:
            for key, idle in list(self._idle.items()):
                keep = [
                    w
                    for w in idle
                    if older_than_s is not None and now - w.last_used < older_than_s and w.alive
                ]
                expired += [w for w in idle if w not in keep]
                if keep:
                    self._idle[key] = keep
                else:
                    del self._idle[key]
        for warm in expired:
            warm.close()
        return len(expired)

    def idle_count(self) -> int:
        with self._lock:
            return sum(len(idle) for idle in self._idle.values())

    def _start_reaper(self) -> None:
        if self._reaper is None or not self._reaper.is_alive():
            self._reaper = threading.Thread(
                target=self._reap, name="association-pool-reaper", daemon=True
            )
            self._reaper.start()

    def _reap(self) -> None:
        while True:
            time.sleep(self.idle_s / 4)
            self.close_idle(self.idle_s)
            with self._lock:
                if not self._idle:
                    self._reaper = None
                    return


POOL = AssociationPool()
atexit.register(POOL.close_idle)
