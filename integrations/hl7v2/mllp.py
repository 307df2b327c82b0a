"""MLLP, the Minimal Lower Layer Protocol (HL7 v2.5.1 Appendix C, "MLLP Release 2" framing).

A block is ``<SB> message <EB> <CR>`` with SB = 0x0B, EB = 0x1C, CR = 0x0D. :class:`FrameReader`
turns a byte stream into blocks incrementally (no copy of the whole stream, a size limit that holds
while the bytes arrive); :class:`MLLPClient` is the small blocking client of ``clinic hl7 send`` and
the benchmarks; :func:`split_file` reads the files people keep messages in.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

from integrations.hl7v2.errors import FramingError

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"
_SB, _EB = 0x0B, 0x1C
#: Bytes tolerated between blocks: CR after EB and the newlines some senders add.
_BETWEEN_BLOCKS = frozenset(b"\r\n\t ")
#: Of an oversized message, this much is kept: enough to read its MSH and answer it.
OVERSIZE_HEAD_BYTES = 16 * 1024


def frame(payload: bytes) -> bytes:
    """*payload* wrapped in an MLLP block."""
    return START_BLOCK + payload + END_BLOCK + CARRIAGE_RETURN


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete block's content."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class OversizeFrame:
    """A complete block larger than the limit: its first bytes and its full size."""

    head: bytes
    size: int


class FrameReader:
    """Incremental MLLP deframer with a maximum message size.

    ``feed(data)`` returns the blocks completed by *data*. Bytes outside a block other than
    whitespace raise :class:`FramingError` (the stream cannot be resynchronised safely, so the caller
    closes the connection). A block over *max_bytes* is consumed and discarded while it arrives; only
    its head is kept, so one huge message costs no more memory than the limit.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        self._in_block = False
        self._size = 0  # bytes of the current block, including those discarded

    @property
    def in_block(self) -> bool:
        """True while a block has started and not ended (a drop now loses it)."""
        return self._in_block

    def feed(self, data: bytes) -> list[Frame | OversizeFrame]:
        out: list[Frame | OversizeFrame] = []
        view = memoryview(data)
        position, length = 0, len(data)
        while position < length:
            if not self._in_block:
                byte = view[position]
                if byte == _SB:
                    self._in_block = True
                    self._size = 0
                    self._buffer.clear()
                elif byte not in _BETWEEN_BLOCKS:
                    raise FramingError("bytes outside an MLLP block (expected 0x0B)")
                position += 1
                continue
            end = data.find(END_BLOCK, position)
            stop = length if end < 0 else end
            if data.find(START_BLOCK, position, stop) >= 0:
                raise FramingError("a new MLLP block started before the previous one ended")
            self._take(view[position:stop])
            if end < 0:
                break
            out.append(self._finish())
            position = end + 1
        return out

    def _take(self, chunk: memoryview) -> None:
        self._size += len(chunk)
        if self._size <= self.max_bytes:
            self._buffer += chunk
            return
        room = OVERSIZE_HEAD_BYTES - len(self._buffer)
        if room > 0:
            self._buffer += chunk[:room]
        elif room < 0:
            del self._buffer[OVERSIZE_HEAD_BYTES:]

    def _finish(self) -> Frame | OversizeFrame:
        self._in_block = False
        payload = bytes(self._buffer)
        self._buffer.clear()
        if self._size > self.max_bytes:
            return OversizeFrame(payload[:OVERSIZE_HEAD_BYTES], self._size)
        return Frame(payload)


class MLLPClient:
    """A blocking MLLP client: one request, one response block, with timeouts.

    Unlike ``hl7.client.MLLPClient`` it reads until the end of the response block (a response split
    over several TCP segments is read whole) and supports TLS.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        max_response_bytes: int = 1 << 20,
    ) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock: socket.socket = (
            ssl_context.wrap_socket(sock, server_hostname=host) if ssl_context else sock
        )
        self._reader = FrameReader(max_response_bytes)
        self._pending: list[Frame | OversizeFrame] = []

    def __enter__(self) -> MLLPClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, payload: bytes) -> bytes:
        """Send one message and return the payload of the response block."""
        self.sock.sendall(frame(payload))
        return self.receive()

    def receive(self) -> bytes:
        while not self._pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection without a response")
            self._pending.extend(self._reader.feed(data))
        block = self._pending.pop(0)
        if isinstance(block, OversizeFrame):
            raise FramingError(f"response of {block.size} bytes is over the limit")
        return block.payload


def split_file(data: bytes) -> list[bytes]:
    """The messages of a file, each with CR segment terminators.

    Three layouts are recognised: MLLP blocks (0x0B ... 0x1C 0x0D) one after another; messages
    separated by blank lines; and messages written one after another where each starts with a line
    beginning ``MSH`` (segments on their own lines, LF, CRLF or CR).
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if START_BLOCK in data:
        reader = FrameReader(max_bytes=len(data) + 1)
        return [b.payload for b in reader.feed(data) if isinstance(b, Frame)]
    messages: list[list[bytes]] = []
    current: list[bytes] | None = None
    for line in data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
        if not line.strip():
            current = None
        elif line.startswith(b"MSH"):
            current = [line]
            messages.append(current)
        elif current is not None:
            current.append(line)
        else:
            raise ValueError("a segment outside any message: every message must start with MSH")
    return [b"\r".join(segments) for segments in messages]
