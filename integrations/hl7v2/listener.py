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
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine

from clinic.db import make_engine
from clinic.messages.models import MessageStatus
from clinic.messages.service import Arrival
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
from integrations.hl7v2.mllp import Frame, FrameReader, OversizeFrame, frame
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
#: A connection silent this long is closed (senders reconnect; a half-open socket is freed).
IDLE_TIMEOUT_S = 600.0
READ_CHUNK = 64 * 1024


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
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.committer.start()
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, ssl=self.ssl_context, limit=READ_CHUNK, backlog=256
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("MLLP listener on %s:%d%s", self.host, self.port, " (TLS)" if self.ssl_context else "")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._connections):
            writer.close()
        await self.committer.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = writer.get_extra_info("peername") or ("?", 0)
        peer = f"{address[0]}:{address[1]}"[:64]
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle stall on ACKs
        self._connections.add(writer)
        frames = FrameReader(self.door.max_bytes)
        try:
            while True:
                # asyncio.timeout, not wait_for: wait_for wraps every read in a new task.
                async with asyncio.timeout(self.idle_timeout):
                    data = await reader.read(READ_CHUNK)
                if not data:
                    if frames.in_block:
                        log.warning("MLLP peer %s dropped the connection mid-message; nothing stored", peer)
                    return
                blocks = frames.feed(data)
                if blocks:
                    await self._answer(blocks, peer, writer)
        except FramingError as exc:
            log.warning("MLLP peer %s: %s; closing the connection", peer, exc)
        except TimeoutError:
            log.info("MLLP peer %s idle for %.0f s; closing", peer, self.idle_timeout)
        except (ConnectionError, ssl.SSLError) as exc:
            log.info("MLLP peer %s: %s", peer, type(exc).__name__)
        finally:
            self._connections.discard(writer)
            self.committer.forget(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(
        self, blocks: list[Frame | OversizeFrame], peer: str, writer: asyncio.StreamWriter
    ) -> None:
        """Store the blocks of one read together, then answer each in order."""
        door = self.door
        verdicts = [
            door.admit(b.payload, peer) if isinstance(b, Frame) else door.oversize(b.head, b.size, peer)
            for b in blocks
        ]
        pending = [
            self.committer.submit(v.arrival, writer) if v.arrival is not None else None for v in verdicts
        ]
        for verdict, future in zip(verdicts, pending, strict=True):
            response = verdict.response
            if future is not None:
                try:
                    recorded = await future
                    response = recorded.ack
                    if recorded.duplicate:
                        log.info(
                            "HL7 repeat of message %d from %s (%s); stored answer sent again",
                            recorded.message_id, peer, verdict.arrival.control_id[:40],  # type: ignore[union-attr]
                        )  # fmt: skip
                except StoreUnavailableError as exc:
                    code = accept_response(verdict.header, exc)
                    response = build_ack(verdict.header, code, exc, codec=verdict.codec) if code else b""
            if verdict.reason:
                log.info("HL7 from %s refused: %s", peer, verdict.reason)
            if response:
                writer.write(frame(response))
        await writer.drain()


def server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS for the listener when ``hl7_tls_cert`` and ``hl7_tls_key`` are set."""
    if settings.hl7_tls_cert is None and settings.hl7_tls_key is None:
        return None
    if settings.hl7_tls_cert is None or settings.hl7_tls_key is None:
        raise ValueError("set both CLINIC_HL7_TLS_CERT and CLINIC_HL7_TLS_KEY, or neither")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.hl7_tls_cert, settings.hl7_tls_key)
    return context


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
