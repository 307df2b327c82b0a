"""The MLLP listener: frame, check the header, store, then acknowledge (DESIGN.md §4 rules 1 and 5).

One asyncio server, any number of connections. Per message:

1. :class:`~integrations.hl7v2.mllp.FrameReader` cuts the stream into blocks; bytes outside a block
   close the connection (it cannot be resynchronised); a block over ``hl7_max_message_bytes`` is
   discarded as it arrives and answered AR.
2. :class:`Door` decodes the block (BOM, MSH-18, LF/CRLF -> CR, :mod:`integrations.hl7v2.codec`),
   reads MSH with a small parser (never hl7apy here: ~30 ms per ORU) and decides: accept, AE
   (required field missing, table 0357 code 101) or AR (not HL7, unsupported message type 200 /
   event 201 / processing id 202 / version 203, too large). The acknowledgement is built at once
   (:mod:`integrations.hl7v2.ack`).
3. :class:`~integrations.hl7v2.store.GroupCommitter` stores it. Messages that arrive while a commit
   runs wait and are committed together in the next transaction (group commit: one fsync for many
   messages); then every acknowledgement of the batch is sent. A repeat of a stored message (same
   MSH-3 and MSH-10) gets the stored acknowledgement and is not stored again. If the store fails,
   the message is answered AR (code 207, "send again") and nothing is kept.

Nothing is processed here: :mod:`integrations.hl7v2.processor` takes stored messages in order.
Logs name the peer, sending application and control id, never message content.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine

from clinic.db import make_engine
from clinic.messages.models import MessageStatus
from clinic.messages.service import Arrival, Recorded
from clinic.settings import Settings
from integrations.hl7v2.ack import HL7APY_VERSIONS, accept_response, build_ack
from integrations.hl7v2.codec import (
    MessageHeader,
    decode,
    is_empty_value,
    parse_header,
    segment_fields,
)
from integrations.hl7v2.errors import (
    AcknowledgementReceivedError,
    FramingError,
    HL7Error,
    MessageParseError,
    MessageTooLargeError,
    RequiredFieldMissingError,
    StoreUnavailableError,
    UnsupportedEventError,
    UnsupportedMessageTypeError,
    UnsupportedProcessingIdError,
    UnsupportedVersionError,
)
from integrations.hl7v2.mllp import Frame, FrameReader, frame
from integrations.hl7v2.store import GroupCommitter, poll_for_the_write_lock

log = logging.getLogger(__name__)

#: MSH fields every message must value (v2.5.1 §2.14.9: MSH-9, -10, -11, -12 are required).
MSH_REQUIRED = (9, 10, 11, 12)
#: Fields checked at the door, by message type, beyond MSH: without them nothing can be done with
#: the message, so the sender hears it at once (AE, code 101) instead of finding a FAILED row later.
DOOR_REQUIRED: dict[str, tuple[str, ...]] = {
    "ADT": ("PID-3",),
    "ORM": ("PID-3", "ORC-1"),
    "OMI": ("PID-3", "ORC-1"),
    "ORU": ("PID-3", "OBR-4"),
}
#: Processing ids (table 0103): production, debugging, training.
PROCESSING_IDS = frozenset({"P", "D", "T"})
#: A connection silent this long is closed (``hl7_idle_timeout_s`` in the settings).
IDLE_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """The door's decision on one block: what to store (None: unreadable, not stored) and what to
    answer when the store succeeds."""

    arrival: Arrival | None
    header: MessageHeader | None
    codec: str
    response: bytes
    reason: str


class Door:
    """Decides on each framed message without touching the database (pure, fast)."""

    def __init__(
        self,
        supported: Collection[tuple[str, str]],
        *,
        required: Mapping[str, Sequence[str]] | None = None,
        default_charset: str = "ASCII",
        max_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.required = dict(DOOR_REQUIRED if required is None else required)
        self.supported = frozenset((code.upper(), event.upper()) for code, event in supported)
        self.codes = frozenset(code for code, _ in self.supported)
        self.default_charset = default_charset
        self.max_bytes = max_bytes

    def check(self, header: MessageHeader, segments: list[str]) -> None:
        """Raise the first reason to refuse *header*'s message."""
        for number in MSH_REQUIRED:
            if is_empty_value(header.get(number), header.delimiters):
                raise RequiredFieldMissingError(f"MSH-{number}")
        if header.processing_id not in PROCESSING_IDS:
            raise UnsupportedProcessingIdError("unsupported processing id in MSH-11", location="MSH-11")
        if header.version not in HL7APY_VERSIONS:
            raise UnsupportedVersionError(
                f"unsupported HL7 version {header.version[:16]!r} in MSH-12", location="MSH-12"
            )
        code, event = header.message_code, header.trigger_event
        if code == "ACK":
            raise AcknowledgementReceivedError("acknowledgement received; not answered", location="MSH-9")
        if code not in self.codes:
            raise UnsupportedMessageTypeError(
                f"unsupported message type {code[:8]!r} (MSH-9.1)", location="MSH-9"
            )
        if (code, event) not in self.supported:
            raise UnsupportedEventError(
                f"unsupported trigger event {code[:8]}^{event[:8]} (MSH-9.2)", location="MSH-9"
            )
        for location in self.required.get(code, ()):
            segment, _, field_number = location.partition("-")
            number = int(field_number)
            found = segment_fields(segments, segment, header.delimiters)
            value = found[number] if found is not None and number < len(found) else ""
            if is_empty_value(value, header.delimiters):
                missing = "" if found is not None else f" (no {segment} segment)"
                raise RequiredFieldMissingError(location, f"required field {location} missing{missing}")

    def admit(self, raw: bytes, peer: str) -> Verdict:
        """The verdict on one complete block."""
        try:
            message = decode(raw, self.default_charset)
        except MessageParseError as exc:
            return self._unreadable(raw, peer, exc)
        header = message.header
        error: HL7Error | None = None
        try:
            self.check(header, message.segments)
        except HL7Error as exc:
            error = exc
        return self._verdict(raw, peer, header, message.codec, error)

    def oversize(self, head: bytes, size: int, peer: str) -> Verdict:
        """The verdict on a block over the size limit (only its head was kept)."""
        error = MessageTooLargeError(f"message of {size} bytes exceeds the limit of {self.max_bytes} bytes")
        header, codec = self._header_of(head)
        if header is None:
            return self._unstored(error)
        return self._verdict(head, peer, header, codec, error)

    def _unreadable(self, raw: bytes, peer: str, error: MessageParseError) -> Verdict:
        """Not decodable as a whole: answer from the MSH when it can still be read (and keep the
        message as REJECTED), else answer with an empty header and keep nothing."""
        header, codec = self._header_of(raw)
        if header is None:
            return self._unstored(error)
        return self._verdict(raw, peer, header, codec, error)

    @staticmethod
    def _unstored(error: HL7Error) -> Verdict:
        """No readable MSH: nothing to store under, an AR with empty MSH-5/6 and MSA-2."""
        code = accept_response(None, error)
        response = build_ack(None, code, error) if code else b""
        return Verdict(None, None, "ascii", response, error.reason)

    @staticmethod
    def _header_of(raw: bytes) -> tuple[MessageHeader | None, str]:
        """MSH read leniently (latin-1 decodes any byte) from a message that failed to decode."""
        text = raw.removeprefix(b"\xef\xbb\xbf").lstrip(b"\r\n\t ").decode("latin-1")
        first = text.replace("\n", "\r").split("\r", 1)[0]
        try:
            return parse_header(first), "ascii"
        except MessageParseError:
            return None, "ascii"

    @staticmethod
    def _verdict(raw: bytes, peer: str, header: MessageHeader, codec: str, error: HL7Error | None) -> Verdict:
        code = accept_response(header, error)
        response = build_ack(header, code, error, codec=codec) if code is not None else b""
        arrival = Arrival(
            raw=raw,
            peer=peer,
            sending_application=header.sending_application[:227],
            sending_facility=header.sending_facility[:227],
            control_id=header.control_id[:199],
            message_type=header.message_type[:64],
            version=header.version[:16],
            charset=codec,
            status=MessageStatus.RECEIVED if error is None else MessageStatus.REJECTED,
            error="" if error is None else _describe(error),
            ack=response,
            ack_code=code.value if code is not None else "",
        )
        return Verdict(arrival, header, codec, response, "" if error is None else error.reason)


def _describe(error: HL7Error) -> str:
    where = f" at {error.location}" if error.location else ""
    return f"{error.code.value} {error.code.text}{where}: {error.reason}"


#: A connection whose unanswered messages reach this many stops being read until they are
#: answered (a sender that streams without reading its ACKs cannot grow our memory without bound).
MAX_UNANSWERED = 1000


class _Slot:
    """One message of a connection, from its arrival until its answer is written (in order)."""

    __slots__ = ("verdict", "response", "done")

    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict
        self.response = verdict.response
        self.done = verdict.arrival is None  # nothing to store: answered at once


class Connection(asyncio.Protocol):
    """One MLLP connection: blocks in, verdicts, arrivals to the group committer, answers out in
    arrival order as their transactions end.

    An :class:`asyncio.Protocol` rather than streams: no task, future or timeout object per
    message; the committer calls :meth:`_stored` right after the commit and the answer is written
    there (measured with 8 senders: the stream version spent ~40 µs per message in asyncio's
    stream, future and timeout machinery)."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.door = listener.door
        self.committer = listener.committer
        self.frames = FrameReader(listener.door.max_bytes)
        self.slots: deque[_Slot] = deque()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.last_active = 0.0
        self.paused = False

    # --- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        address = transport.get_extra_info("peername") or ("?", 0)
        self.peer = f"{address[0]}:{address[1]}"[:64]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle stall on ACKs
        self.last_active = self.listener.now()
        self.listener.connections.add(self)
        subject = peer_subject(transport)
        if subject:
            log.info("MLLP peer %s authenticated as %s", self.peer, subject)

    def data_received(self, data: bytes) -> None:
        self.last_active = self.listener.now()
        try:
            blocks = self.frames.feed(data)
        except FramingError as exc:
            log.warning("MLLP peer %s: %s; closing the connection", self.peer, exc)
            self.close()
            return
        door, peer = self.door, self.peer
        for block in blocks:
            if isinstance(block, Frame):
                verdict = door.admit(block.payload, peer)
            else:
                verdict = door.oversize(block.head, block.size, peer)
            if verdict.reason:
                log.info("HL7 from %s refused: %s", peer, verdict.reason)
            slot = _Slot(verdict)
            self.slots.append(slot)
            if verdict.arrival is not None:
                self.committer.submit(verdict.arrival, self, functools.partial(self._stored, slot))
        self._flush()
        if len(self.slots) >= MAX_UNANSWERED and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        return False  # close our side too; answers still due are lost with the connection

    def connection_lost(self, exc: Exception | None) -> None:
        if self.frames.in_block:
            log.warning("MLLP peer %s dropped the connection mid-message; nothing stored", self.peer)
        elif exc is not None:
            log.info("MLLP peer %s: %s", self.peer, type(exc).__name__)
        self.listener.connections.discard(self)
        self.committer.forget(self)
        self.transport = None

    def pause_writing(self) -> None:  # the peer does not read its answers: stop reading too
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.paused:
            self.transport.resume_reading()

    # --- answers -----------------------------------------------------------------------------

    def _stored(self, slot: _Slot, recorded: Recorded | None, error: StoreUnavailableError | None) -> None:
        verdict = slot.verdict
        if recorded is not None:
            slot.response = recorded.ack
            if recorded.duplicate:
                log.info(
                    "HL7 repeat of message %d from %s (%s); stored answer sent again",
                    recorded.message_id, self.peer, verdict.arrival.control_id[:40],  # type: ignore[union-attr]
                )  # fmt: skip
        elif error is not None:
            code = accept_response(verdict.header, error)
            slot.response = build_ack(verdict.header, code, error, codec=verdict.codec) if code else b""
        slot.done = True
        self._flush()

    def _flush(self) -> None:
        """Write the answers due, in arrival order (a stored message's answer waits for its
        commit, and so do the answers of the messages after it)."""
        slots = self.slots
        out = []
        while slots and slots[0].done:
            response = slots.popleft().response
            if response:
                out.append(frame(response))
        if out and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        if self.paused and len(slots) < MAX_UNANSWERED // 2 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Listener:
    """The asyncio MLLP server. Build it, ``await start()``, ``await stop()``."""

    def __init__(
        self,
        door: Door,
        committer: GroupCommitter,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        idle_timeout: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.door = door
        self.committer = committer
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.idle_timeout = idle_timeout
        self.connections: set[Connection] = set()
        self.now: Callable[[], float] = time.monotonic
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.now = loop.time
        self.committer.start()
        self._server = await loop.create_server(
            lambda: Connection(self), self.host, self.port, ssl=self.ssl_context, backlog=256
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = loop.create_task(self._close_idle(), name="mllp-idle-sweeper")
        log.info("MLLP listener on %s:%d%s", self.host, self.port, " (TLS)" if self.ssl_context else "")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self.connections):
            connection.close()
        await self.committer.stop()

    async def _close_idle(self) -> None:
        """Close connections silent for ``idle_timeout`` (senders reconnect; a half-open socket is
        freed), looking a few times per timeout instead of arming a timer per read."""
        interval = max(0.05, min(self.idle_timeout / 4, 30.0))
        while True:
            await asyncio.sleep(interval)
            cutoff = self.now() - self.idle_timeout
            for connection in [c for c in self.connections if c.last_active < cutoff and not c.slots]:
                log.info("MLLP peer %s idle for %.0f s; closing", connection.peer, self.idle_timeout)
                connection.close()


def server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS for the listener when ``hl7_tls_cert`` and ``hl7_tls_key`` are set; with
    ``hl7_tls_client_ca`` too, mutual TLS: a sender without a certificate that CA signed fails the
    handshake and sends nothing (IHE ATNA's node authentication)."""
    if settings.hl7_tls_cert is None and settings.hl7_tls_key is None:
        if settings.hl7_tls_client_ca is not None:
            raise ValueError("CLINIC_HL7_TLS_CLIENT_CA needs CLINIC_HL7_TLS_CERT and CLINIC_HL7_TLS_KEY")
        return None
    if settings.hl7_tls_cert is None or settings.hl7_tls_key is None:
        raise ValueError("set both CLINIC_HL7_TLS_CERT and CLINIC_HL7_TLS_KEY, or neither")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.hl7_tls_cert, settings.hl7_tls_key)
    if settings.hl7_tls_client_ca is not None:
        context.load_verify_locations(cafile=settings.hl7_tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def peer_subject(transport: asyncio.BaseTransport) -> str:
    """The common name of a TLS peer's verified certificate ("" without one): who sent, for logs."""
    certificate = transport.get_extra_info("peercert") or {}
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)[:64]
    return ""


def build_listener(
    settings: Settings,
    supported: Collection[tuple[str, str]],
    engine: Engine,
    *,
    required: Mapping[str, Sequence[str]] | None = None,
    port: int | None = None,
    threaded: bool = False,
) -> Listener:
    door = Door(
        supported,
        required=required,
        default_charset=settings.hl7_default_charset,
        max_bytes=settings.hl7_max_message_bytes,
    )
    return Listener(
        door,
        GroupCommitter(engine, threaded=threaded),
        host=settings.mllp_host,
        port=settings.mllp_port if port is None else port,
        ssl_context=server_ssl_context(settings),
        idle_timeout=settings.hl7_idle_timeout_s,
    )


def run_listener(
    settings: Settings,
    supported: Collection[tuple[str, str]],
    stop: threading.Event,
    *,
    required: Mapping[str, Sequence[str]] | None = None,
    port: int | None = None,
    on_ready: Callable[[Listener], None] | None = None,
    threaded: bool = False,
) -> None:
    """Serve until *stop* is set (the component of ``clinic up``; tests run it in a thread).

    The engine is made here, once (``hide_parameters``: a failed statement never logs a message's
    bytes), and disposed of when the listener stops."""
    engine = make_engine(settings.resolved_database_url, hide_parameters=True)
    poll_for_the_write_lock(engine)
    listener = build_listener(settings, supported, engine, required=required, port=port, threaded=threaded)

    async def main() -> None:
        await listener.start()
        if on_ready is not None:
            on_ready(listener)
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await listener.stop()

    try:
        asyncio.run(main())
    finally:
        engine.dispose()


@dataclass
class RunningListener:
    """A listener serving in a thread of this process (tests, benchmarks)."""

    listener: Listener
    thread: threading.Thread
    stop_event: threading.Event

    @property
    def port(self) -> int:
        return self.listener.port

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout)


def start_listener_thread(
    settings: Settings,
    supported: Collection[tuple[str, str]],
    *,
    required: Mapping[str, Sequence[str]] | None = None,
    port: int = 0,
    timeout: float = 10.0,
) -> RunningListener:
    """Start :func:`run_listener` in a daemon thread on *port* (0: a free one) and wait until it
    listens."""
    stop = threading.Event()
    ready: list[Listener] = []
    started = threading.Event()
    failure: list[BaseException] = []

    def on_ready(listener: Listener) -> None:
        ready.append(listener)
        started.set()

    def target() -> None:
        try:
            run_listener(settings, supported, stop, required=required, port=port, on_ready=on_ready)
        except BaseException as exc:  # reported to the starter below
            failure.append(exc)
            started.set()

    thread = threading.Thread(target=target, name="mllp-listener", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not started.wait(0.05):
        if time.monotonic() > deadline:
            raise TimeoutError("the MLLP listener did not start")
    if failure:
        raise failure[0]
    return RunningListener(ready[0], thread, stop)
