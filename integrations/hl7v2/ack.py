"""HL7 v2 acknowledgements: which one to send, and the ACK message itself.

Rules (HL7 v2.5.1 §2.9 "Message processing rules", §2.14.1 MSA, §2.14.5 ERR):

* **Original mode** (MSH-15 and MSH-16 both empty): one acknowledgement, AA / AE / AR. We send it
  once the message is durably stored (DESIGN.md §4 rule 1); processing comes later.
* **Enhanced mode** (MSH-15 or MSH-16 valued): an *accept* acknowledgement CA / CE / CR when MSH-15
  asks for it (AL, ER, SU; NE: none; empty: AL), and after processing an *application*
  acknowledgement AA / AE when MSH-16 asks (AL, ER, SU; empty or NE: none).
* MSA-2 echoes MSH-10; sending and receiving application/facility are swapped (MSH-3/4 <-> MSH-5/6);
  MSH-11, MSH-12 and MSH-18 are echoed. AE/AR/CE/CR carry an ERR segment: ERR-2 location, ERR-3
  table 0357 condition code, ERR-4 severity (table 0516), ERR-8 user message (v2.5+), or ERR-1
  (ELD) before v2.5; MSA-3 repeats the reason for versions that still have it (< v2.7).
* Never an acknowledgement to an acknowledgement.

Building: the ACK's structure comes from hl7apy (:func:`build_ack_hl7apy`). hl7apy takes ~4.7 ms to
build one (measured here), over half the time budget of the whole door, so :func:`render_ack` builds
each shape once with hl7apy, with sentinel values, and then fills the sentinels (a few µs). The tests
check that both give the same text and that every ACK parses back with hl7apy and python-hl7.

hl7apy 1.3.5 serialises ERR of v2.8+ one field to the left (ERR-1 is withdrawn there and its writer
counts positions from the structure); those versions are built with the v2.7 structure, which has
the same MSH, MSA and ERR fields in the right places.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import re
import threading
import time
import uuid
from dataclasses import dataclass, fields, replace
from enum import StrEnum

from integrations.hl7v2.codec import MessageHeader
from integrations.hl7v2.errors import (
    FramingError,
    HL7Error,
    MessageParseError,
    MessageTooLargeError,
    StoreUnavailableError,
    UnsupportedEventError,
    UnsupportedMessageTypeError,
    UnsupportedProcessingIdError,
    UnsupportedVersionError,
)
from integrations.hl7v2.tables import AckCode, AckCondition, Severity

#: Versions hl7apy has structures for; an ACK to another version is written as v2.5.1.
HL7APY_VERSIONS = (
    "2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8", "2.8.1", "2.8.2",
)  # fmt: skip
DEFAULT_VERSION = "2.5.1"

#: The one table from errors to the original-mode answer (v2.5.1 §2.9.2.2: AR when the message is
#: refused for reasons unrelated to its content: MSH values, framing, system errors; AE for errors
#: in its content). Enhanced mode maps AA/AE/AR to CA/CE/CR.
ERROR_ACK: dict[type[HL7Error], AckCode] = {
    FramingError: AckCode.AR,
    MessageParseError: AckCode.AR,
    MessageTooLargeError: AckCode.AR,
    UnsupportedMessageTypeError: AckCode.AR,
    UnsupportedEventError: AckCode.AR,
    UnsupportedProcessingIdError: AckCode.AR,
    UnsupportedVersionError: AckCode.AR,
    StoreUnavailableError: AckCode.AR,
}
_ENHANCED = {AckCode.AA: AckCode.CA, AckCode.AE: AckCode.CE, AckCode.AR: AckCode.CR}


class AckMode(StrEnum):
    ORIGINAL = "original"
    ENHANCED = "enhanced"


def mode_of(header: MessageHeader | None) -> AckMode:
    """Enhanced mode when MSH-15 or MSH-16 is valued (§2.9.3)."""
    if header is not None and (header.accept_ack_type or header.application_ack_type):
        return AckMode.ENHANCED
    return AckMode.ORIGINAL


def ack_code_for(error: HL7Error | None) -> AckCode:
    """AA without an error, else the table's answer (AE for content errors)."""
    if error is None:
        return AckCode.AA
    for kind in type(error).__mro__:
        if kind in ERROR_ACK:
            return ERROR_ACK[kind]  # type: ignore[index]
    return AckCode.AE


def _wanted(condition: AckCondition, positive: bool) -> bool:
    """Table 0155: AL always, NE never, ER on error/reject, SU on success."""
    if condition is AckCondition.ALWAYS:
        return True
    if condition is AckCondition.NEVER:
        return False
    return positive if condition is AckCondition.SUCCESS else not positive


def accept_response(header: MessageHeader | None, error: HL7Error | None) -> AckCode | None:
    """The acknowledgement the listener sends for a message, or None for no answer (an ACK
    received, or enhanced mode with MSH-15 NE / ER / SU that does not ask for this outcome)."""
    if header is not None and header.message_code == "ACK":
        return None
    code = ack_code_for(error)
    if mode_of(header) is AckMode.ORIGINAL:
        return code
    assert header is not None
    condition = AckCondition.from_field(header.accept_ack_type) or AckCondition.ALWAYS
    enhanced = _ENHANCED[code]
    return enhanced if _wanted(condition, enhanced.is_positive) else None


def application_response(header: MessageHeader, error: HL7Error | None) -> AckCode | None:
    """The application acknowledgement due after processing (enhanced mode, MSH-16), or None."""
    if mode_of(header) is AckMode.ORIGINAL or header.message_code == "ACK":
        return None
    condition = AckCondition.from_field(header.application_ack_type) or AckCondition.NEVER
    code = ack_code_for(error)
    return code if _wanted(condition, code.is_positive) else None


# --- the message --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AckFields:
    """Every value of an ACK, already in standard delimiters and escaped."""

    sending_application: str  # MSH-3 (the original's MSH-5)
    sending_facility: str  # MSH-4 (the original's MSH-6)
    receiving_application: str  # MSH-5 (the original's MSH-3)
    receiving_facility: str  # MSH-6 (the original's MSH-4)
    timestamp: str  # MSH-7
    message_type: str  # MSH-9
    control_id: str  # MSH-10 of the ACK itself
    processing_id: str  # MSH-11
    version: str  # MSH-12
    charset: str  # MSH-18 ("" = none)
    code: str  # MSA-1
    acked_control_id: str  # MSA-2
    text: str  # MSA-3 / ERR-8 ("" without an error)
    error_location: str  # ERR-2 (ERL) or the first components of ERR-1 (ELD)
    error_code: str  # ERR-3 (CWE) or ERR-1.4 (CE, in subcomponents)
    severity: str  # ERR-4


#: MSH-1/MSH-2 of every ACK: the four standard characters. From v2.7 hl7apy would add the optional
#: truncation character "#" and then escape "#" in text as \\L\\, which other parsers keep literally.
_ENCODING_CHARS = {
    "FIELD": "|",
    "COMPONENT": "^",
    "REPETITION": "~",
    "ESCAPE": "\\",
    "SUBCOMPONENT": "&",
    "GROUP": "\r",
    "SEGMENT": "\r",
}


def _structure_version(version: str) -> str:
    if version not in HL7APY_VERSIONS:
        return DEFAULT_VERSION
    return "2.7" if version.startswith("2.8") else version


@functools.lru_cache(maxsize=256)
def _is_before(version: str, other: str) -> bool:
    def key(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split(".") if p.isdigit())

    return key(version) < key(other)


def build_ack_hl7apy(values: AckFields) -> str:
    """The ACK built field by field with hl7apy (ER7 text, CR-separated). Slow (~5 ms): the
    reference that :func:`render_ack` templates are made from and compared with."""
    from hl7apy.core import Message

    version = _structure_version(values.version)
    message = Message("ACK", version=version, encoding_chars=_ENCODING_CHARS)
    msh = message.msh
    for number, value in (
        (3, values.sending_application),
        (4, values.sending_facility),
        (5, values.receiving_application),
        (6, values.receiving_facility),
        (7, values.timestamp),
        (9, values.message_type),
        (10, values.control_id),
        (11, values.processing_id),
        (12, values.version),
    ):
        if value:
            setattr(msh, f"msh_{number}", value)
    if values.charset and not _is_before(version, "2.3"):
        msh.msh_18 = values.charset
    message.msa.msa_1 = values.code
    message.msa.msa_2 = values.acked_control_id
    if values.text and _is_before(version, "2.7"):
        message.msa.msa_3 = values.text
    if values.error_code:
        err = message.add_segment("ERR")
        if _is_before(version, "2.5"):
            code = values.error_code.replace("^", "&")
            location = "^".join(values.error_location.split("^")[:3])  # ELD: segment^seq^field
            err.err_1 = f"{location}{'^' * (2 - location.count('^'))}^{code}"
        else:
            if values.error_location:
                err.err_2 = values.error_location
            err.err_3 = values.error_code
            err.err_4 = values.severity
            if values.text:
                err.err_8 = values.text
    return str(message.to_er7())


_SENTINEL = "ZQ{}QZ"
_SENTINEL_RE = re.compile(r"ZQ(\d+)QZ")
#: Values that shape the text beyond their own field (the ERR-1 composition, the structure used):
#: kept literally in a template. They take few values (one per version and per error).
_LITERAL = frozenset({"version", "error_location", "error_code"})
_templates: dict[tuple[object, ...], tuple[tuple[str, ...], tuple[str, ...]]] = {}
_templates_lock = threading.Lock()


_FIELD_NAMES = tuple(f.name for f in fields(AckFields))


def _template(values: AckFields) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(literal pieces, field names): the text is pieces[0] + value(names[0]) + pieces[1] + ..."""
    present = tuple(name for name in _FIELD_NAMES if getattr(values, name))
    key = (present, values.version, values.error_location, values.error_code)
    cached = _templates.get(key)
    if cached is not None:
        return cached
    variable = [name for name in present if name not in _LITERAL]
    placeholders = {name: _SENTINEL.format(i) for i, name in enumerate(variable)}
    text = build_ack_hl7apy(replace(values, **placeholders))
    parts = _SENTINEL_RE.split(text)
    pieces = tuple(parts[0::2])
    names = tuple(variable[int(i)] for i in parts[1::2])
    with _templates_lock:
        _templates.setdefault(key, (pieces, names))
    return pieces, names


def render_ack(values: AckFields) -> str:
    """The same text as :func:`build_ack_hl7apy`, from a cached hl7apy-built template."""
    pieces, names = _template(values)
    out = [pieces[0]]
    for name, piece in zip(names, pieces[1:], strict=True):
        out.append(getattr(values, name))
        out.append(piece)
    return "".join(out)


# --- from a received message to its ACK --------------------------------------------------------

#: MSH-10 of our ACKs: a random per-process prefix and a counter (unique, <= 20 characters, the
#: v2.5 length of MSH-10), cheaper than a UUID per message.
_CONTROL_PREFIX = uuid.uuid4().hex[:9]
_control_counter = itertools.count(1)
_ESCAPES = str.maketrans(
    {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\", "\r": " ", "\n": " "}
)


def new_control_id() -> str:
    return f"{_CONTROL_PREFIX}{next(_control_counter)}"


def escape(text: str) -> str:
    """Free text with the standard delimiters escaped (§2.7.4); CR/LF become spaces."""
    return text.translate(_ESCAPES)


def error_location(location: str) -> str:
    """ "PID-3" as an ERL (ERR-2): segment^sequence^field, e.g. ``PID^1^3``."""
    if not location:
        return ""
    segment, _, rest = location.partition("-")
    field, _, component = rest.partition(".")
    parts = [segment, "1"]
    if field.isdigit():
        parts.append(field)
        if component.isdigit():
            parts += ["1", component]
    return "^".join(parts)


_clock: tuple[int, str] = (0, "")


def hl7_timestamp(now: dt.datetime | None = None) -> str:
    """MSH-7 (DTM) in UTC with its offset (the current second's text is reused)."""
    global _clock
    if now is not None:
        return now.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S+0000")
    second = int(time.time())
    if _clock[0] != second:
        _clock = (second, dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y%m%d%H%M%S+0000"))
    return _clock[1]


def ack_message_type(trigger: str, version: str) -> str:
    """MSH-9 of an ACK: ``ACK^<trigger>^ACK`` from v2.3.1 (message structure), ``ACK^<trigger>``
    before, ``ACK`` in v2.1."""
    trigger = "".join(c for c in trigger if c.isalnum())[:3]
    if version == "2.1" or not trigger:
        return "ACK"
    if version in HL7APY_VERSIONS and _is_before(version, "2.3.1"):
        return f"ACK^{trigger}"
    return f"ACK^{trigger}^ACK"


def ack_fields(
    header: MessageHeader | None,
    code: AckCode,
    error: HL7Error | None = None,
    *,
    now: dt.datetime | None = None,
    control_id: str | None = None,
) -> AckFields:
    """Every value of the acknowledgement of *header* (None: a message whose MSH is unreadable)."""
    version = DEFAULT_VERSION
    if header is not None and header.version in HL7APY_VERSIONS:
        version = header.version

    def original(number: int) -> str:
        return header.delimiters.to_standard(header.get(number)) if header is not None else ""

    text = escape(error.reason) if error is not None else ""
    return AckFields(
        sending_application=original(5),
        sending_facility=original(6),
        receiving_application=original(3),
        receiving_facility=original(4),
        timestamp=hl7_timestamp(now),
        message_type=ack_message_type(header.trigger_event if header else "", version),
        control_id=control_id or new_control_id(),
        processing_id=original(11) or "P",
        version=version,
        charset=header.charset if header is not None else "",
        code=code.value,
        acked_control_id=original(10),
        text=text,
        error_location=error_location(error.location) if error is not None else "",
        error_code=f"{error.code.value}^{error.code.text}^HL70357" if error is not None else "",
        severity=Severity.ERROR.value if error is not None else "",
    )


def build_ack(
    header: MessageHeader | None,
    code: AckCode,
    error: HL7Error | None = None,
    *,
    codec: str = "ascii",
    now: dt.datetime | None = None,
    control_id: str | None = None,
) -> bytes:
    """The encoded acknowledgement of *header* with *code* (and *error*'s ERR segment)."""
    if error is None and header is not None and now is None and control_id is None:
        return _accept_ack(header, code, codec)
    text = render_ack(ack_fields(header, code, error, now=now, control_id=control_id))
    return text.encode(codec, errors="replace")


#: Acknowledgements without an error, by everything but MSH-7, MSH-10 and MSA-2: the text around
#: those three. A feed's messages share their MSH-3..6, trigger, MSH-11/12/18, so the door fills
#: three values instead of building the ACK (~3 µs instead of ~20 µs, measured here).
_accepts: dict[tuple[object, ...], tuple[str, str, str, str]] = {}
_MARKS = ("\x00T\x00", "\x00C\x00", "\x00M\x00")


def _accept_ack(header: MessageHeader, code: AckCode, codec: str) -> bytes:
    key = (header.fields[2:6], header.trigger_event, header.get(11), header.version, header.charset,
           header.delimiters, code)  # fmt: skip
    pieces = _accepts.get(key)
    if pieces is None:
        values = replace(
            ack_fields(header, code), timestamp=_MARKS[0], control_id=_MARKS[1], acked_control_id=_MARKS[2]
        )
        text = render_ack(values)
        before_t, rest = text.split(_MARKS[0])
        before_c, rest = rest.split(_MARKS[1])
        before_m, after = rest.split(_MARKS[2])
        if len(_accepts) > 4096:  # many distinct senders: start again rather than grow
            _accepts.clear()
        pieces = _accepts[key] = (before_t, before_c, before_m, after)
    acked = header.delimiters.to_standard(header.get(10))
    text = f"{pieces[0]}{hl7_timestamp()}{pieces[1]}{new_control_id()}{pieces[2]}{acked}{pieces[3]}"
    return text.encode(codec, errors="replace")


@dataclass(frozen=True, slots=True)
class AckSummary:
    """What a sender wants to know of an acknowledgement it received."""

    code: str  # MSA-1
    acked_control_id: str  # MSA-2
    text: str  # ERR-8, else MSA-3
    error_code: str  # ERR-3.1 (or ERR-1.4.1)


def read_ack(payload: bytes) -> AckSummary:
    """MSA and ERR of a received acknowledgement (fast; raises MessageParseError)."""
    from integrations.hl7v2.codec import decode, segment_fields

    message = decode(payload, "utf-8")
    d = message.header.delimiters
    msa = segment_fields(message.segments, "MSA", d) or []
    err = segment_fields(message.segments, "ERR", d) or []

    def at(values: list[str], index: int) -> str:
        return values[index] if index < len(values) else ""

    code = at(err, 3).split(d.component)[0] or at(at(err, 1).split(d.component), 3).split(d.subcomponent)[0]
    return AckSummary(
        code=at(msa, 1),
        acked_control_id=at(msa, 2),
        text=at(err, 8) or at(msa, 3),
        error_code=code,
    )
