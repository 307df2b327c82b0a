"""Bytes to HL7 v2 text, and a small fast reader of the message header (MSH).

The door of the listener must stay fast: hl7apy takes ~30 ms to parse an 11-OBX ORU (DESIGN.md
§10), so the listener reads only what it needs to store and acknowledge a message, here, with plain
string splitting; the full parse happens later, in processing.

Rules implemented (HL7 v2.5.1 chapter 2):

* §2.5.4 message delimiters: MSH-1 is the field separator, MSH-2 the encoding characters
  (component, repetition, escape, subcomponent, and from v2.7 an optional truncation character);
  each must be distinct and none may be alphanumeric or a segment terminator.
* §2.15.9.18 MSH-18 character set (table 0211): empty means ASCII; the first repetition is the
  character set of the message. A UTF-8 byte-order mark is stripped (and, with an empty MSH-18,
  taken to mean UTF-8).
* Segments end with CR (§2.5.1). Many real feeds send LF or CRLF; both python-hl7 and hl7apy then
  silently see a single MSH segment, so LF and CRLF are normalised to CR before anything parses.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field

from integrations.hl7v2.errors import MessageParseError
from integrations.hl7v2.tables import ErrorCode

UTF8_BOM = b"\xef\xbb\xbf"
SEGMENT_TERMINATOR = "\r"
#: The delimiters we write (HL7 v2.5.1 §2.5.4 recommended values).
STANDARD_ENCODING_CHARACTERS = "^~\\&"

#: HL7 table 0211 (alternate character sets) -> Python codec. Only ASCII-compatible encodings: an
#: MLLP frame is found by its bytes (0x0B ... 0x1C 0x0D), which UTF-16/32 text would not keep.
CHARSETS: dict[str, str] = {
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "8859/1": "iso8859-1",
    "ISO IR100": "iso8859-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    # v2.3-v2.5 "UNICODE" names no encoding; on MLLP feeds it is UTF-8 in practice.
    "UNICODE": "utf-8",
    "KS X 1001": "euc_kr",
    "GB 18030-2000": "gb18030",
    "BIG-5": "big5",
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp_2",
}


def codec_for(charset: str) -> str:
    """The Python codec for an HL7 table 0211 name (or a Python codec name, e.g. from settings).

    Raises :class:`MessageParseError` (table 0357 code 103, at MSH-18) for a value we cannot decode.
    """
    name = charset.strip()
    if not name:
        return "ascii"
    known = CHARSETS.get(name.upper())
    if known:
        return known
    try:
        python_name = codecs.lookup(name).name
    except LookupError:
        python_name = ""
    if python_name and not python_name.startswith(("utf-16", "utf-32")):
        return python_name
    error = MessageParseError(f"unsupported character set {name!r} in MSH-18", location="MSH-18")
    error.code = ErrorCode.TABLE_VALUE_NOT_FOUND
    raise error


@dataclass(frozen=True, slots=True)
class Delimiters:
    """MSH-1 and MSH-2 of one message."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def is_standard(self) -> bool:
        return self is STANDARD_DELIMITERS or self == STANDARD_DELIMITERS

    def to_standard(self, value: str) -> str:
        """*value* (a field's raw text in these delimiters) re-written with the standard ones,
        escaping any standard delimiter that was plain text here (§2.7.4)."""
        if not value or self is STANDARD_DELIMITERS or self == STANDARD_DELIMITERS:
            return value
        own = (self.field, self.component, self.repetition, self.escape, self.subcomponent)
        ours = ("|", "^", "~", "\\", "&")
        escapes = {"|": "\\F\\", "^": "\\S\\", "~": "\\R\\", "\\": "\\E\\", "&": "\\T\\"}
        out = []
        for char in value:
            if char in own:
                out.append(ours[own.index(char)])
            elif char in escapes:
                out.append(escapes[char])
            else:
                out.append(char)
        return "".join(out)


STANDARD_DELIMITERS = Delimiters()


@dataclass(frozen=True, slots=True)
class MessageHeader:
    """What the door needs from MSH, as raw field text in the message's own delimiters."""

    delimiters: Delimiters
    #: fields[n - 1] is MSH-n for n >= 2 (fields[0] is "MSH", fields[1] is MSH-2).
    fields: tuple[str, ...]
    #: Components of the first repetition, by field number, split once when first asked for.
    _components: dict[int, list[str]] = field(default_factory=dict, compare=False, repr=False)

    def get(self, number: int) -> str:
        """MSH-*number* as raw text ("" when absent)."""
        if number == 1:
            return self.delimiters.field
        return self.fields[number - 1] if number - 1 < len(self.fields) else ""

    def component(self, number: int, index: int) -> str:
        """Component *index* (1-based) of the first repetition of MSH-*number*."""
        parts = self._components.get(number)
        if parts is None:
            value = self.get(number).split(self.delimiters.repetition, 1)[0]
            parts = self._components[number] = value.split(self.delimiters.component)
        return parts[index - 1] if index - 1 < len(parts) else ""

    @property
    def sending_application(self) -> str:
        """MSH-3 namespace id (HD.1), or its universal id when the namespace is empty."""
        return self.component(3, 1) or self.component(3, 2)

    @property
    def sending_facility(self) -> str:
        return self.component(4, 1) or self.component(4, 2)

    @property
    def message_code(self) -> str:
        return self.component(9, 1).strip().upper()

    @property
    def trigger_event(self) -> str:
        return self.component(9, 2).strip().upper()

    @property
    def message_type(self) -> str:
        """MSH-9 in standard delimiters, e.g. ``ADT^A01^ADT_A01``."""
        return self.delimiters.to_standard(self.get(9).split(self.delimiters.repetition, 1)[0])

    @property
    def control_id(self) -> str:
        return self.get(10).strip()

    @property
    def processing_id(self) -> str:
        return self.component(11, 1).strip().upper()

    @property
    def version(self) -> str:
        return self.component(12, 1).strip()

    @property
    def accept_ack_type(self) -> str:
        return self.get(15).strip().upper()

    @property
    def application_ack_type(self) -> str:
        return self.get(16).strip().upper()

    @property
    def charset(self) -> str:
        """MSH-18, first repetition ("" = ASCII)."""
        return self.get(18).split(self.delimiters.repetition, 1)[0].strip()


def _delimiters(segment: str) -> Delimiters:
    """MSH-1 and MSH-2 from the first segment (§2.5.4)."""
    if len(segment) < 8:
        raise MessageParseError("MSH segment too short for its delimiters", location="MSH-2")
    field_sep = segment[3]
    end = segment.find(field_sep, 4)
    encoding = segment[4:] if end < 0 else segment[4:end]
    chars = field_sep + encoding
    if (
        len(encoding) not in (4, 5)
        or len(set(chars)) != len(chars)
        or any(c.isalnum() or c in "\r\n\x0b\x1c " for c in chars)
    ):
        raise MessageParseError("broken encoding characters in MSH-1/MSH-2", location="MSH-2")
    if chars == "|^~\\&":
        return STANDARD_DELIMITERS  # the common case: one shared instance, compared by identity
    return Delimiters(field_sep, encoding[0], encoding[1], encoding[2], encoding[3])


def parse_header(text: str) -> MessageHeader:
    """The MSH of a normalised message (CR-separated). Raises :class:`MessageParseError` when the
    text does not start with an MSH segment or its delimiters are broken."""
    if not text.startswith("MSH"):
        raise MessageParseError("no MSH segment at the start of the message", location="MSH")
    first = text.split(SEGMENT_TERMINATOR, 1)[0]
    delimiters = _delimiters(first)
    return MessageHeader(delimiters, tuple(first.split(delimiters.field)))


def normalise(text: str) -> str:
    """CRLF and LF segment terminators to CR; empty segments (blank lines) and surrounding
    whitespace dropped (§2.5.1: segments end with CR)."""
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    text = text.strip("\r\n\t ")
    while "\r\r" in text:
        text = text.replace("\r\r", "\r")
    return text


def _raw_msh18(raw: bytes) -> str:
    """MSH-18 read from the bytes before decoding (the MSH segment is ASCII in every encoding we
    accept); "" when there is none or the MSH cannot be read (decoding then reports it)."""
    end = len(raw)
    for terminator in (b"\r", b"\n"):
        position = raw.find(terminator)
        if 0 <= position < end:
            end = position
    first = raw[:end]
    if not first.startswith(b"MSH") or len(first) < 4:
        return ""
    fields = first.split(first[3:4])
    if len(fields) < 18:
        return ""
    value = fields[17]
    if len(first) > 5:
        value = value.split(first[5:6], 1)[0]  # MSH-2's repetition separator
    return value.decode("ascii", errors="replace").strip()


@dataclass(frozen=True, slots=True)
class DecodedMessage:
    """A framed message decoded and normalised, with its header."""

    text: str
    #: The Python codec that decoded the bytes (stored in ``HL7Message.charset``).
    codec: str
    header: MessageHeader
    segments: list[str] = field(default_factory=list)


def decode(raw: bytes, default_charset: str = "ASCII") -> DecodedMessage:
    """Decode one framed message: strip a UTF-8 BOM, honour MSH-18 (*default_charset* when it is
    empty), normalise segment terminators and read the header.

    Raises :class:`MessageParseError` for bytes that are not an HL7 v2 message in the declared
    character set."""
    bom = raw.startswith(UTF8_BOM)
    body = raw[len(UTF8_BOM) :] if bom else raw
    body = body.lstrip(b"\r\n\t ")
    if not body.startswith(b"MSH"):
        raise MessageParseError("not an HL7 v2 message: it does not start with MSH", location="MSH")
    declared = _raw_msh18(body)
    codec = codec_for(declared) if declared else ("utf-8" if bom else codec_for(default_charset))
    try:
        text = body.decode(codec)
    except UnicodeDecodeError as exc:
        label = declared or default_charset or "ASCII"
        raise MessageParseError(
            f"the message is not valid {label} text (byte {exc.start}); set MSH-18",
            location="MSH-18",
        ) from None
    text = normalise(text)
    segments = text.split(SEGMENT_TERMINATOR)
    return DecodedMessage(text, codec, parse_header(text), segments)


def message_text(raw: bytes, codec: str = "") -> str:
    """The normalised text of a stored message: ``message_text(row.raw, row.charset)``.

    This is how processing (the mappings) reads ``HL7Message.raw``: the same BOM stripping and
    terminator normalisation as at the door, with the codec the listener recorded."""
    if raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM) :]
    return normalise(raw.decode(codec or "ascii", errors="replace"))


def segment_fields(segments: list[str], name: str, delimiters: Delimiters) -> list[str] | None:
    """The fields of the first segment called *name* (fields[n] is SEG-n), or None."""
    prefix = name + delimiters.field
    for segment in segments:
        if segment.startswith(prefix) or segment == name:
            return segment.split(delimiters.field)
    return None


def is_empty_value(value: str, delimiters: Delimiters) -> bool:
    """True for a field with no data, e.g. "" or "^^^" (components all empty)."""
    data = value.strip(delimiters.component + delimiters.repetition + delimiters.subcomponent + " \t")
    return not data or data == '""'
