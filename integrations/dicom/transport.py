"""pynetdicom's acceptor, without its polling delays: an event-driven fast path for ingest.

pynetdicom 3.0 runs two polling loops per association: the DUL thread sleeps 1 ms whenever it
finds nothing to do, and the association thread sleeps 1 ms before every look at its message
queue. A C-STORE waits in both (the complete request for the association thread, then the
response for the DUL thread, then the next request for the DUL thread again), which costs ~1-2 ms
of wall time per instance on top of the work, and reads the socket 4 KiB at a time.

The subclasses here keep pynetdicom's state machine, PDU and DIMSE code and change only how the
loops wait: the DUL thread waits in ``select()`` on the peer's socket and on a wake-up socket that
is written when the association thread queues a PDU to send; the association thread blocks on its
DIMSE message queue. They override private methods, so they are used only with the pynetdicom
versions they were written against (:data:`FAST_PATH_SUPPORTED`); with any other version the SCP
runs on the stock classes.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import time
from copy import deepcopy
from datetime import datetime
from typing import Any, cast

import pynetdicom
from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket, RequestHandler

LOGGER = logging.getLogger(__name__)

#: The pynetdicom releases whose private reactor methods these classes mirror.
FAST_PATH_SUPPORTED = pynetdicom.__version__.startswith("3.0.")

#: The longest a loop waits before it re-checks its timers and flags (seconds). Events (data from
#: the peer, a PDU to send, a DIMSE message) end the wait at once.
_IDLE_WAIT = 0.01
#: Socket reads of up to this many bytes (pynetdicom reads 4 KiB at a time).
_RECV_CHUNK = 256 * 1024


class _WakingQueue(queue.Queue[Any]):
    """A queue that wakes the DUL thread's ``select()`` when something is put on it."""

    def __init__(self, wake: socket.socket) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        with contextlib.suppress(OSError):  # full (already woken) or closed (shutting down)
            self._wake.send(b"\0")


class EventDrivenDUL(DULServiceProvider):
    """The DICOM Upper Layer provider (PS3.8 §9), waiting on events instead of sleeping."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.to_provider_queue = _WakingQueue(self._wake_w)

    def _wait(self) -> None:
        """Until the peer sends data, a PDU is queued for sending, or :data:`_IDLE_WAIT` passes."""
        peer = self.socket.socket if self.socket is not None else None
        if peer is None or peer.fileno() < 0:
            time.sleep(self._run_loop_delay)
            return
        try:
            ready, _, _ = select.select([peer, self._wake_r], [], [], _IDLE_WAIT)
        except (OSError, ValueError):
            time.sleep(self._run_loop_delay)
            return
        if self._wake_r in ready:
            with contextlib.suppress(OSError):
                while self._wake_r.recv(4096):
                    pass

    def run_reactor(self) -> None:
        """pynetdicom 3.0's ``DULServiceProvider.run_reactor`` with ``_wait`` for its sleep."""
        self._idle_timer.start()
        sock = cast(AssociationSocket, self.socket)
        idle = False
        try:
            while True:
                if not self.assoc._dul_ready.is_set():
                    self.assoc._dul_ready.set()
                    idle = True
                if idle:
                    self._wait()
                if self._kill_thread:
                    break
                if self.artim_timer.expired:
                    self.event_queue.put("Evt18")
                try:
                    if self._process_recv_primitive():
                        pass
                    elif self._is_transport_event():
                        self._idle_timer.restart()
                except Exception as exc:
                    LOGGER.error("Exception in the DUL reactor, aborting the association")
                    LOGGER.exception(exc)
                    abort_pdu = A_ABORT_RQ()
                    abort_pdu.source = 0x02
                    abort_pdu.reason_diagnostic = 0x00
                    sock.send(abort_pdu.encode())
                    self.assoc.is_aborted = True
                    self.assoc.is_established = False
                    self.assoc._kill = True
                    self._kill_thread = True
                    return
                try:
                    event = self.event_queue.get(block=False)
                except queue.Empty:
                    idle = True
                    continue
                self.state_machine.do_action(event)
                idle = False
        finally:
            self._wake_r.close()
            self._wake_w.close()


class FastAssociationSocket(AssociationSocket):
    """An association socket that reads up to 256 KiB per call instead of 4 KiB."""

    def recv(self, nr_bytes: int) -> bytearray:
        sock = cast(socket.socket, self.socket)
        data = bytearray()
        while len(data) < nr_bytes:
            chunk = sock.recv(min(nr_bytes - len(data), _RECV_CHUNK))
            if not chunk:  # the peer closed the connection: return what there is
                break
            data += chunk
        return data


class FastAssociation(Association):
    """An acceptor whose reactor blocks on its DIMSE message queue instead of sleeping."""

    def __init__(self, ae: Any, mode: str) -> None:
        super().__init__(ae, mode)
        self.dul = EventDrivenDUL(self)
        # The timeout setters configure the DUL's timers: apply them to the new DUL.
        self.acse_timeout = self.ae.acse_timeout
        self.network_timeout = self.ae.network_timeout

    def _run_reactor(self) -> None:
        """pynetdicom 3.0's ``Association._run_reactor`` with a blocking queue read."""
        self._is_paused = False
        messages = self.dimse.msg_queue
        while not self._kill:
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            try:
                context_id, msg = messages.get(timeout=_IDLE_WAIT)
            except queue.Empty:
                context_id, msg = None, None
            if msg:
                self._serve_request(msg, cast(int, context_id))

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                LOGGER.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                LOGGER.info(
                    "Association Aborted" + (" (A-P-ABORT)" if self.acse.is_aborted("a-p-abort") else "")
                )
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class FastRequestHandler(RequestHandler):
    """pynetdicom 3.0's ``RequestHandler`` creating :class:`FastAssociation` acceptors."""

    def _create_association(self) -> Association:
        assoc = FastAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"

        sock = FastAssociationSocket(assoc, client_socket=self.request)
        assoc.set_socket(sock)

        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)

        assoc.requestor.address_info = self.remote

        for event, handlers in self.server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent):
                for handler in cast(list[tuple[Any, Any]], handlers):
                    assoc.bind(event, handler[0], handler[1])
        return assoc
