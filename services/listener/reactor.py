"""Event-driven association loops for the listener (pynetdicom's own loops poll).

pynetdicom 3.0.4 runs two threads per association, and both poll: the DUL thread sleeps 1 ms
whenever it found nothing to do and then `select`s its socket with a zero timeout, and the
association thread sleeps 1 ms between looks at its DIMSE queue: ~2,000 wake-ups a second per
association, idle or not, and up to a millisecond of waiting at each hop of every C-STORE.
(Plain py-spy showed these sleeps as ~half of the listener's samples, but it counts a sleeping
thread as active. Sampling only the GIL holder, the two loops were 38 % of the listener's Python
time under the ingest bench; a bare pynetdicom SCP spent 10-35 % more CPU per instance with
them than with these.)

Here the same loops block instead, and are woken by exactly what they wait for:
- the DUL thread blocks in `select` on its socket and an eventfd that every other thread's put
  into its queues (a response to send, an abort, a kill) writes to; the ARTIM timer bounds the
  wait;
- the association thread blocks on a SimpleQueue token put by every put into its DIMSE message
  queue and its user queue (release, abort), by the DUL thread's exit and by `kill()`; the
  network (idle) timeout bounds the wait.
Both waits are also capped (`MAX_WAIT_S`), so a state change nobody signals (another thread
closing the socket) is still noticed, within that cap.

Also per C-STORE: the request is served by the DUL thread that decoded it (`_MessageQueue`), a
plain request's command set is read and its response packed with struct (`FastResponseDIMSE`,
services/listener/store_request.py and encoding.py), and the socket's `recv` fills one buffer
per PDU (`WholePDUSocket`) instead of 4 KiB reads appended to a bytearray. The state machine,
PDU decoding, every other DIMSE message, timers and events are pynetdicom's. These
classes copy pynetdicom 3.0.4's internals, so with any other version the server falls back to
pynetdicom's own classes (`event_driven_supported`).
"""

from __future__ import annotations

import copy
import logging
import os
import queue
import select
import ssl
import struct
import threading
from datetime import datetime
from typing import Any, cast

import pynetdicom
from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket, RequestHandler

from services.listener.encoding import c_store_rsp_command
from services.listener.store_request import StoreRequestInProgress, read_store_command

logger = logging.getLogger(__name__)

# The version whose run loops these classes replace (pyproject pins it).
PYNETDICOM_VERSION = "3.0.4"
# Longest a loop sleeps without being woken: bounds how late it notices a change nobody signals.
MAX_WAIT_S = 0.05


def event_driven_supported() -> bool:
    return pynetdicom.__version__ == PYNETDICOM_VERSION and hasattr(os, "eventfd")


class _SignallingQueue(queue.Queue[Any]):
    """A queue that calls `wake` after each put (under the queue's lock; `wake` takes none)."""

    def __init__(self, wake: Any) -> None:
        super().__init__()
        self._wake = wake

    def _put(self, item: Any) -> None:
        super()._put(item)
        self._wake()


class _MessageQueue(_SignallingQueue):
    """The DIMSE message queue. A C-STORE request that arrives while nothing else is queued is
    served at once by the DUL thread that decoded it, instead of being handed to the association
    thread and its response handed back: two thread wake-ups less per instance. Without
    asynchronous operations (we never negotiate them) the peer waits for each response, so the
    DUL has nothing else to do meanwhile. Everything else, and any request pynetdicom would
    answer with an abort (unknown context, during release), goes through the queue."""

    def __init__(self, assoc: EventDrivenAssociation) -> None:
        super().__init__(assoc.wake_reactor)
        self._assoc = assoc

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        context_id, primitive = item
        assoc = self._assoc
        if (
            isinstance(primitive, C_STORE)
            and threading.get_ident() == cast(EventDrivenDUL, assoc.dul)._reactor_ident
            and assoc.is_established
            and not assoc._sent_release
            and assoc._reactor_checkpoint.is_set()  # no user code waiting on this queue
            and context_id in assoc._accepted_cx
            and self.empty()
        ):
            assoc._serve_request(primitive, context_id)
            return
        super().put(item, block, timeout)


class EventDrivenDUL(DULServiceProvider):
    """pynetdicom's DUL with a blocking reactor (see the module docstring)."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wakeup_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # Held to write or close the eventfd: a write after close could hit a reused fd number.
        self._wakeup_lock = threading.Lock()
        self._reactor_ident: int | None = None
        self.event_queue = _SignallingQueue(self._wake)
        self.to_provider_queue = _SignallingQueue(self._wake)
        self.to_user_queue = _SignallingQueue(cast(EventDrivenAssociation, assoc).wake_reactor)

    def _wake(self) -> None:
        # The reactor's own puts need no wake-up: it looks at its queues before it blocks.
        if threading.get_ident() != self._reactor_ident:
            with self._wakeup_lock:
                if self._wakeup_fd >= 0:  # else the reactor has exited
                    os.eventfd_write(self._wakeup_fd, 1)

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake()

    def stop_dul(self) -> bool:
        if self.state_machine.current_state != "Sta1":
            return False
        self._kill_thread = True
        self._wake()
        self.join()
        return True

    def run_reactor(self) -> None:
        self._reactor_ident = threading.get_ident()
        try:
            self._run_event_driven()
        finally:
            with self._wakeup_lock:
                os.close(self._wakeup_fd)
                self._wakeup_fd = -1
            # The association's loop checks `dul.is_alive()`; tell it now rather than at its cap.
            cast(EventDrivenAssociation, self.assoc).wake_reactor()

    def _run_event_driven(self) -> None:
        # pynetdicom's run_reactor, with the 1 ms sleep replaced by `_wait_for_work`.
        self._idle_timer.start()
        self.socket = cast(AssociationSocket, self.socket)
        self.assoc._dul_ready.set()
        while not self._kill_thread:
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                # One primitive to send OR one PDU received per turn, as pynetdicom does.
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                logger.error("exception in the DUL reactor, aborting the association")
                logger.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                self._wait_for_work()
                continue
            self.state_machine.do_action(event)

    def _wait_for_work(self) -> None:
        """Block until the socket is readable, another thread queued something, the ARTIM timer
        runs out or MAX_WAIT_S passes."""
        if self.to_provider_queue.qsize() or self.event_queue.qsize() or self._kill_thread:
            return
        timeout = MAX_WAIT_S
        if self.artim_timer._start_time is not None and self.artim_timer._end_time is None:
            timeout = max(0.0, min(timeout, self.artim_timer.remaining))
        readable: list[Any] = [self._wakeup_fd]
        sock = self.socket
        raw = sock.socket if sock is not None and sock._is_connected else None
        if raw is not None:
            if isinstance(raw, ssl.SSLSocket) and raw.pending():
                return  # decrypted bytes waiting that select cannot see
            try:
                if raw.fileno() >= 0:
                    readable.append(raw)
            except OSError:
                return  # closed under us: let _is_transport_event see it
        try:
            ready, _, _ = select.select(readable, [], [], timeout)
        except (OSError, ValueError):
            return  # the socket went away meanwhile; the next turn finds out
        if self._wakeup_fd in ready:
            try:
                os.eventfd_read(self._wakeup_fd)
            except BlockingIOError:
                pass


class EventDrivenAssociation(Association):
    """An acceptor association whose reactor blocks on its queues instead of sleeping 1 ms."""

    def __init__(self, ae: Any, mode: str) -> None:
        # Wake-up tokens in a C queue (lighter than threading.Event's Python Condition).
        self._wakeups: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._wake_pending = False
        super().__init__(ae, mode)
        self.dul = EventDrivenDUL(self)
        self.dimse = FastResponseDIMSE(self)
        # The base __init__ set these timers on the DUL it made; set them again on ours.
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout
        self.dimse.msg_queue = _MessageQueue(self)

    def wake_reactor(self) -> None:
        # At most one token queued. A put that sees `_wake_pending` already set is covered: the
        # reactor clears the flag only after taking a token, and looks at its queues after that.
        if not self._wake_pending:
            self._wake_pending = True
            self._wakeups.put(None)

    def kill(self) -> None:
        self.wake_reactor()
        super().kill()

    def _run_reactor(self) -> None:
        # pynetdicom's acceptor loop, with `time.sleep(0.001)` replaced by a wait for a token.
        self._is_paused = False
        while not self._kill:
            timeout = MAX_WAIT_S
            if self.network_timeout is not None:
                timeout = max(0.0, min(timeout, self.dul._idle_timer.remaining))
            try:
                self._wakeups.get(timeout=timeout)
            except queue.Empty:
                pass
            self._wake_pending = False  # before looking: a put after this queues a token again

            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            # Every message that has arrived, not one per wake-up.
            while not self._kill:
                context_id, msg = self.dimse.get_msg(block=False)
                if not msg:
                    break
                self._serve_request(msg, cast(int, context_id))

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                logger.debug("association released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)  # so EVT_ACSE_RECV fires for subscribers
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                logger.error("network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class FastResponseDIMSE(DIMSEServiceProvider):
    """Reads a plain C-STORE-RQ with `store_request.read_store_command` and sends a plain
    C-STORE-RSP from bytes packed by `encoding.c_store_rsp_command`, instead of through pydicom
    (the same primitive, the same bytes; anything else, or a bound EVT_DIMSE_RECV/SENT handler,
    takes pynetdicom's path). One difference: a command arriving inside the struct-read
    request's data set aborts the association (see `receive_primitive`)."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._store_request: StoreRequestInProgress | None = None

    def receive_primitive(self, primitive: P_DATA) -> None:
        pdvs = primitive.presentation_data_value_list
        request = self._store_request
        if request is None:
            request = self._start_store_request(pdvs)
            if request is None:
                super().receive_primitive(primitive)
                return
            pdvs = pdvs[1:]
        for _, data in pdvs:
            if data[0] & 1:
                # A command fragment before the data set's last fragment breaks PS3.8 §E.2
                # (no other message's fragments until this one is complete). pynetdicom would
                # drop the half-received C-STORE silently and serve the new command; we abort
                # (Evt19), so the sender learns the store did not happen.
                logger.error("command fragment received inside a C-STORE data set")
                self._store_request = None
                self.dul.event_queue.put("Evt19")
                return
            request.data_set.write(data[1:])
            if data[0] & 2:  # the last fragment (fragments after it are ignored, as pynetdicom)
                self._store_request = None
                self.msg_queue.put((request.context_id, request.primitive()))
                return

    def _start_store_request(self, pdvs: list[tuple[int, bytes]]) -> StoreRequestInProgress | None:
        if (
            self.message is not None
            or not pdvs
            or pdvs[0][1][0] & 3 != 3  # not a whole command in one fragment
            or pynetdicom._config.STORE_RECV_CHUNKED_DATASET
            or self.assoc.get_handlers(evt.EVT_DIMSE_RECV)
        ):
            return None
        command = read_store_command(memoryview(pdvs[0][1])[1:])
        if command is None:
            return None
        self._store_request = StoreRequestInProgress(pdvs[0][0], command)
        return self._store_request

    def send_msg(self, primitive: Any, context_id: int) -> None:
        if (
            isinstance(primitive, C_STORE)
            and primitive.MessageIDBeingRespondedTo is not None
            and primitive.ErrorComment is None
            and primitive.OffendingElement is None
            and primitive.AffectedSOPClassUID is not None
            and primitive.AffectedSOPInstanceUID is not None
            and primitive.Status is not None
            and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
        ):
            try:
                command = c_store_rsp_command(
                    primitive.MessageIDBeingRespondedTo,
                    primitive.AffectedSOPClassUID,
                    primitive.AffectedSOPInstanceUID,
                    primitive.Status,
                )
            except (UnicodeEncodeError, struct.error):
                pass  # a UID or ID pydicom may still encode: let it
            else:
                pdata = P_DATA()
                # 0x03: command, last fragment (a ~150-byte command set is never split).
                pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
                self.dul.send_pdu(pdata)
                return
        super().send_msg(primitive, context_id)


class WholePDUSocket(AssociationSocket):
    """`recv(n)` fills one buffer of n bytes (pynetdicom reads 4 KiB at a time into a growing
    bytearray: ten reads and copies for a 40 KB PDU)."""

    def recv(self, nr_bytes: int) -> bytearray:
        raw = cast(Any, self.socket)
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        received = 0
        while received < nr_bytes:
            count = raw.recv_into(view[received:])
            if not count:  # connection broken: what we have, as pynetdicom returns it
                del view
                return buffer[:received]
            received += count
        return buffer


class EventDrivenRequestHandler(RequestHandler):
    """pynetdicom's RequestHandler building an EventDrivenAssociation on a WholePDUSocket."""

    def _create_association(self) -> Association:
        # pynetdicom 3.0.4's RequestHandler._create_association, with our two classes.
        assoc = EventDrivenAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        sock = WholePDUSocket(assoc, client_socket=cast(Any, self.request))
        assoc.set_socket(sock)
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = _copied_contexts(self.server.contexts)
        assoc.requestor.address_info = self.remote
        for event in self.server._handlers:
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in self.server._handlers[event]:
                    handler = cast(Any, handler)
                    assoc.bind(event, handler[0], handler[1])
        return assoc


def _copied_contexts(contexts: list[PresentationContext]) -> list[PresentationContext]:
    """What pynetdicom's deepcopy gives (negotiation must not change the server's contexts), in
    a fraction of the time: deepcopy took ~50 ms per association for our ~170 contexts of 16
    transfer syntaxes each, and the str/UID values it walks are immutable."""
    copies = []
    for context in contexts:
        duplicate = copy.copy(context)
        duplicate._transfer_syntax = list(context._transfer_syntax)
        copies.append(duplicate)
    return copies
