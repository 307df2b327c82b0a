"""``multipart/related`` bodies (RFC 2387 over RFC 2046 §5.1) and media types (RFC 9110 §8.3.1,
§12.5.1), as DICOMweb uses them (PS3.18 §8.6 payloads, §8.7 media types and their parameters).

Reading: :func:`split_multipart` checks the whole framing before any part is handed out, so that a
truncated or garbled request is refused as a whole (400) and nothing of it is stored. Parts are
memoryviews into the body: no copy. Writing: :func:`part_header` and :func:`closing_delimiter`
frame parts that the routes stream from files.
"""

from __future__ import annotations

import mmap
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: The header block of one part is a few lines; more than this is not a DICOMweb client.
MAX_PART_HEADER_BYTES = 16 * 1024

#: RFC 2046 §5.1.1: 1 to 70 characters of ``bchars``, not ending in a space.
_BOUNDARY_RE = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]\Z")

Buffer = bytes | bytearray | mmap.mmap


class MediaTypeError(ValueError):
    """A Content-Type that is not what the resource accepts (HTTP 415, PS3.18 §8.5)."""


class MultipartError(ValueError):
    """A ``multipart/related`` body whose framing is broken or truncated (HTTP 400)."""


@dataclass(frozen=True)
class MediaType:
    """``type/subtype`` and its parameters, names lower-cased, values unquoted; *q* from Accept."""

    type: str
    params: Mapping[str, str] = field(default_factory=dict)
    q: float = 1.0

    def param(self, name: str, default: str = "") -> str:
        return self.params.get(name, default)

    def matches(self, concrete: str) -> bool:
        """Whether this (possibly wildcard) media range admits the media type *concrete*."""
        if self.type in ("*/*", concrete):
            return True
        major, _, minor = self.type.partition("/")
        return minor == "*" and concrete.startswith(major + "/")

    def __str__(self) -> str:
        params = "".join(f'; {k}="{v}"' if k == "type" else f"; {k}={v}" for k, v in self.params.items())
        return self.type + params


def _split(value: str, separator: str) -> list[str]:
    """Split *value* on *separator* outside double-quoted strings (RFC 9110 §5.6.4)."""
    pieces: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quoted:
            current.append(char)
            escaped = True
        elif char == '"':
            quoted = not quoted
            current.append(char)
        elif char == separator and not quoted:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    pieces.append("".join(current))
    return pieces


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_media_type(value: str) -> MediaType:
    """Parse one media type with parameters; a ``q`` parameter becomes :attr:`MediaType.q`.

    Lenient where clients are: ``type=application/dicom`` unquoted is accepted.
    """
    pieces = _split(value, ";")
    main = pieces[0].strip().lower()
    if main.count("/") != 1 or not all(main.split("/")):
        raise MediaTypeError(f"not a media type: {value.strip()[:100]!r}")
    params: dict[str, str] = {}
    q = 1.0
    for piece in pieces[1:]:
        if not piece.strip():
            continue
        name, sep, raw = piece.partition("=")
        if not sep:
            raise MediaTypeError(f"media type parameter without a value: {piece.strip()[:60]!r}")
        name = name.strip().lower()
        if name == "q":
            try:
                q = float(raw.strip())
            except ValueError as exc:
                raise MediaTypeError(f"invalid q value {raw.strip()[:20]!r}") from exc
            continue
        params[name] = _unquote(raw)
    return MediaType(main, params, q)


def parse_accept(value: str | None) -> list[MediaType]:
    """The media ranges of an Accept header, best first (stable for equal q); none: ``*/*``."""
    if not value or not value.strip():
        return [MediaType("*/*")]
    ranges = [parse_media_type(piece) for piece in _split(value, ",") if piece.strip()]
    ranges = [r for r in ranges if r.q > 0]
    return sorted(ranges, key=lambda r: -r.q) or [MediaType("*/*")]


@dataclass(frozen=True)
class Part:
    """One body part: its headers (names lower-cased) and its content, a view into the body."""

    index: int
    headers: Mapping[str, str]
    body: memoryview

    def content_type(self, default: MediaType) -> MediaType:
        """The part's Content-Type; RFC 2387 §3.1: ``type`` of the whole when a part has none."""
        value = self.headers.get("content-type")
        return parse_media_type(value) if value else default


def validate_boundary(boundary: str) -> str:
    if not boundary:
        raise MultipartError("the Content-Type has no boundary parameter")
    if not _BOUNDARY_RE.match(boundary):
        raise MultipartError("the boundary parameter is not a valid RFC 2046 boundary")
    return boundary


def _headers(body: Buffer, start: int, end: int, number: int) -> tuple[dict[str, str], int]:
    if body[start : start + 2] == b"\r\n":  # no header fields at all
        return {}, start + 2
    stop = body.find(b"\r\n\r\n", start, min(end, start + MAX_PART_HEADER_BYTES))
    if stop < 0:
        raise MultipartError(f"part {number} has no end of its header fields")
    headers: dict[str, str] = {}
    name = ""
    for line in bytes(body[start:stop]).decode("latin-1").split("\r\n"):
        if line[:1] in (" ", "\t") and name:  # obsolete line folding (RFC 5322 §3.2.2)
            headers[name] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise MultipartError(f"part {number} has a malformed header line")
        name = name.strip().lower()
        headers[name] = value.strip()
    return headers, stop + 4


def split_multipart(body: Buffer, boundary: str) -> list[Part]:
    """Split a whole ``multipart/related`` body into its parts (RFC 2046 §5.1.1 grammar).

    Raises :class:`MultipartError` when there is no first boundary, a part is not followed by a
    delimiter (a truncated body), a header block is malformed, or the close delimiter is missing.
    """
    dash = b"--" + validate_boundary(boundary).encode("ascii")
    delimiter = b"\r\n" + dash
    if body[: len(dash)] == dash:
        pos = len(dash)
    else:  # a preamble before the first delimiter
        found = body.find(delimiter)
        if found < 0:
            raise MultipartError("the body does not contain its boundary: not a multipart body")
        pos = found + len(delimiter)
    view = memoryview(body)
    parts: list[Part] = []
    while True:
        if body[pos : pos + 2] == b"--":  # the close delimiter; an epilogue may follow
            if not parts:
                raise MultipartError("the multipart body has no parts")
            return parts
        while body[pos : pos + 1] in (b" ", b"\t"):  # transport padding
            pos += 1
        number = len(parts) + 1
        if pos >= len(body):
            raise MultipartError("the body ends without the closing boundary: it is truncated")
        if body[pos : pos + 2] != b"\r\n":
            raise MultipartError(f"malformed boundary line before part {number}")
        start = pos + 2
        end = body.find(delimiter, start)
        if end < 0:
            raise MultipartError(f"part {number} is not followed by a boundary: the body is truncated")
        headers, content = _headers(body, start, end, number)
        parts.append(Part(number, headers, view[content:end]))
        pos = end + len(delimiter)


def new_boundary() -> str:
    return uuid.uuid4().hex


def multipart_type(part_type: str, boundary: str, transfer_syntax: str = "") -> str:
    """The Content-Type of a ``multipart/related`` response (PS3.18 §8.7.3.4)."""
    value = f'multipart/related; type="{part_type}"; boundary={boundary}'
    return value + (f"; transfer-syntax={transfer_syntax}" if transfer_syntax else "")


def part_header(
    boundary: str, content_type: str, first: bool, extra: Iterable[tuple[str, str]] = ()
) -> bytes:
    """The delimiter and header fields that open a part (the first has no leading CRLF)."""
    lines = [f"Content-Type: {content_type}", *(f"{k}: {v}" for k, v in extra)]
    prefix = b"" if first else b"\r\n"
    return prefix + f"--{boundary}\r\n".encode() + "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n"


def closing_delimiter(boundary: str) -> bytes:
    return f"\r\n--{boundary}--\r\n".encode()


def encode_multipart(parts: Iterable[tuple[str, bytes]], boundary: str) -> bytes:
    """A whole body from ``(content type, content)`` pairs (small payloads: frames, bulk data)."""
    chunks: list[bytes] = []
    for i, (content_type, content) in enumerate(parts):
        chunks += [part_header(boundary, content_type, first=i == 0), content]
    chunks.append(closing_delimiter(boundary))
    return b"".join(chunks)
