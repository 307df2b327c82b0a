"""Reading stored HL7 v2 messages (ER7, "pipes and hats") for the inbound mappings.

**Choice of parser** (measured on this 2-core machine while it was shared, one core, the 11-OBX
IHE PCD-01 ORU^R01 of ``tests/integrations/hl7v2/messages/oru_r01_pcd01_mdc.hl7``; the ranges are
runs at different loads, ``bench/hl7_processing.py`` repeats them):

==========================================================  =================  ==================
parser                                                      per message        messages/s
==========================================================  =================  ==================
hl7apy 1.3.5 ``parse_message`` (default: groups, tolerant)   ~38-100 ms         ~10-26
hl7apy ``find_groups=False``, tolerant                        ~32-100 ms         ~10-32
hl7apy strict                                                ~32 ms             ~31
python-hl7 0.4.5 ``hl7.parse``                               ~1.4-4.5 ms        ~220-700
this module (split per segment, fields on demand)           ~0.03-0.05 ms      ~20,000-38,000
==========================================================  =================  ==================

hl7apy builds a typed tree of every field whether or not anyone reads it (finding groups costs a
further ~25 %), and in strict mode refuses a whole message for one field that breaks its data type
(components in PV1-18, text in an NM field), which real feeds send. The mappings read a few dozen
fields by position, so they do not need a tree at all: this reader splits each segment on the
field separator and splits components, repetitions and subcomponents only of the fields asked for,
unescaping (§2.7) only values that hold the escape character. It is tolerant by construction (a
missing field reads as ""), uses the delimiters the message declares (MSH-1/MSH-2) and needs
nothing but :mod:`integrations.hl7v2.codec`. python-hl7 is the independent parser of the tests:
every sample message is read by both and compared, and every message we build
(``integrations.hl7v2.oru``, with hl7apy) is read back by both and by hl7apy.

Rules (HL7 v2.5.1 chapter 2): §2.5.4 delimiters, §2.7 escape sequences (``\\F\\ \\S\\ \\T\\ \\R\\
\\E\\``, ``\\Xhh..\\`` hexadecimal data, ``\\.br\\`` line break; highlighting and character-set
escapes are dropped), §2A.22/§2A.23 DTM/TS date-times (precision from year to 1/10000 s, optional
UTC offset).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass

from integrations.hl7v2.codec import Delimiters, message_text, parse_header
from integrations.hl7v2.errors import MappingError, MessageParseError
from integrations.hl7v2.tables import ErrorCode

#: §2.7.1 escape sequences that stand for a delimiter, keyed by their letter.
_DELIMITER_ESCAPES = {"F": "field", "S": "component", "T": "subcomponent", "R": "repetition", "E": "escape"}


def unescape(value: str, delimiters: Delimiters, codec: str = "ascii") -> str:
    """*value* with its escape sequences (§2.7) replaced by what they stand for."""
    esc = delimiters.escape
    if esc not in value:
        return value
    out: list[str] = []
    position = 0
    while True:
        start = value.find(esc, position)
        if start < 0:
            out.append(value[position:])
            break
        end = value.find(esc, start + 1)
        if end < 0:  # a lone escape character: keep it as text (tolerant)
            out.append(value[position:])
            break
        out.append(value[position:start])
        out.append(_expand(value[start + 1 : end], delimiters, codec))
        position = end + 1
    return "".join(out)


def _expand(sequence: str, delimiters: Delimiters, codec: str) -> str:
    if sequence in _DELIMITER_ESCAPES:
        return str(getattr(delimiters, _DELIMITER_ESCAPES[sequence]))
    if sequence == ".br":
        return "\n"
    if sequence[:1] == "X":
        try:
            return bytes.fromhex(sequence[1:]).decode(codec if codec != "ascii" else "latin-1")
        except (ValueError, LookupError):
            return ""
    # \H\ \N\ (highlighting), \Cxxyy\ \Mxxyyzz\ (character set changes), \.sp\ etc.: no text
    return ""


class Segment:
    """One segment: ``segment[n]`` is the raw text of field n (MSH-1 is the field separator)."""

    __slots__ = ("name", "_fields", "_delimiters", "_codec")

    def __init__(self, text: str, delimiters: Delimiters, codec: str) -> None:
        fields = text.split(delimiters.field)
        self.name = fields[0]
        if self.name == "MSH":  # MSH-1 is the separator itself, so MSH-n sits at index n - 1
            fields.insert(1, delimiters.field)
        self._fields = fields
        self._delimiters = delimiters
        self._codec = codec

    def __getitem__(self, number: int) -> str:
        return self._fields[number] if 0 < number < len(self._fields) else ""

    def repetitions(self, number: int) -> list[str]:
        """The raw repetitions of field *number* (empty ones dropped)."""
        return [r for r in self[number].split(self._delimiters.repetition) if r]

    def get(self, number: int, component: int = 1, subcomponent: int = 1, repetition: int = 1) -> str:
        """Field *number*, component, subcomponent of one repetition (all 1-based), unescaped and
        stripped; "" when absent. HL7 ``""`` (explicit null) reads as ""."""
        reps = self[number].split(self._delimiters.repetition)
        if repetition > len(reps):
            return ""
        return self.part(reps[repetition - 1], component, subcomponent)

    def part(self, raw: str, component: int = 1, subcomponent: int = 1) -> str:
        """Component/subcomponent of one raw repetition (as :meth:`repetitions` returns it)."""
        parts = raw.split(self._delimiters.component)
        if component > len(parts):
            return ""
        subs = parts[component - 1].split(self._delimiters.subcomponent)
        if subcomponent > len(subs):
            return ""
        value = subs[subcomponent - 1].strip()
        if value == '""':
            return ""
        return unescape(value, self._delimiters, self._codec)

    def __repr__(self) -> str:  # never the values: they may be PHI
        return f"<Segment {self.name} ({len(self._fields) - 1} fields)>"


@dataclass(frozen=True)
class Coded:
    """CE/CWE: identifier ^ text ^ coding system (HL7 table 0396: LN, SCT, MDC, 99zzz local...)."""

    code: str
    text: str = ""
    system: str = ""


@dataclass(frozen=True)
class PersonName:
    """An XCN/XPN person: id (XCN-1, "" for XPN) and the name as a DICOM PN
    (``FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX``, the form ``clinic.patients.service.display_name`` reads)."""

    id: str
    name: str


class Message:
    """A stored message ready for the mappings: its segments in order and its header."""

    def __init__(self, text: str, codec: str = "ascii") -> None:
        try:
            self.header = parse_header(text)
        except MessageParseError as exc:
            raise MappingError(exc.reason, code=exc.code, location=exc.location) from None
        delimiters = self.header.delimiters
        self.delimiters = delimiters
        self.segments = [Segment(s, delimiters, codec) for s in text.split("\r") if s.strip()]

    @classmethod
    def from_stored(cls, raw: bytes, codec: str) -> Message:
        """From ``HL7Message.raw`` and ``HL7Message.charset`` (the codec the listener used)."""
        return cls(message_text(raw, codec), codec or "ascii")

    @property
    def code(self) -> str:
        return self.header.message_code

    @property
    def trigger(self) -> str:
        return self.header.trigger_event

    @property
    def control_id(self) -> str:
        return self.header.control_id

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def first(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)


# --- data types ------------------------------------------------------------------------------------


def coded(segment: Segment, number: int, repetition: int = 1) -> Coded:
    """CE/CWE field: the first triplet, or the alternate one (components 4-6) when the first is empty."""
    code = segment.get(number, 1, repetition=repetition)
    if code:
        return Coded(
            code, segment.get(number, 2, repetition=repetition), segment.get(number, 3, repetition=repetition)
        )
    alternate = segment.get(number, 4, repetition=repetition)
    return Coded(
        alternate,
        segment.get(number, 5, repetition=repetition),
        segment.get(number, 6, repetition=repetition),
    )


def hd(segment: Segment, number: int, component: int) -> str:
    """An HD inside a component (as CX-4, PL-4): its namespace id, or its universal id."""
    return segment.get(number, component, 1) or segment.get(number, component, 2)


def entity(segment: Segment, number: int) -> tuple[str, str]:
    """EI: (entity identifier, namespace id or universal id)."""
    return segment.get(number, 1), segment.get(number, 2) or segment.get(number, 3)


def _pn(family: str, given: str, middle: str, prefix: str, suffix: str) -> str:
    return "^".join((family, given, middle, prefix, suffix)).rstrip("^")


def person(segment: Segment, number: int) -> PersonName:
    """XCN (PV1-7, ORC-12, OBR-16): 1 id, 2 family (FN.1), 3 given, 4 middle, 5 suffix, 6 prefix."""
    get = segment.get
    name = _pn(get(number, 2), get(number, 3), get(number, 4), get(number, 6), get(number, 5))
    return PersonName(get(number, 1), name)


def patient_name(segment: Segment, number: int = 5) -> str:
    """XPN (PID-5): the legal name (XPN-7 = L) or the first; 1 family (FN.1), 2 given, 3 middle,
    4 suffix, 5 prefix. Returned as a DICOM PN."""
    reps = segment.repetitions(number)
    if not reps:
        return ""
    chosen = next((r for r in reps if segment.part(r, 7).upper() == "L"), reps[0])
    part = segment.part
    return _pn(part(chosen, 1), part(chosen, 2), part(chosen, 3), part(chosen, 5), part(chosen, 4))


#: The time zone of timestamps without a UTC offset (the sender's local time), for the messages
#: being processed in this context; None: this server's own zone. Set by :func:`sender_timezone`.
_SENDER_ZONE: contextvars.ContextVar[dt.tzinfo | None] = contextvars.ContextVar(
    "hl7_sender_zone", default=None
)


def timezone_named(name: str) -> dt.tzinfo | None:
    """The zone *name* (IANA, e.g. "Asia/Seoul"; "" is None: this server's zone). Raises
    ``ValueError`` for a name the time zone database does not know."""
    if not name:
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as 'Asia/Seoul')") from None


@contextlib.contextmanager
def sender_timezone(name: str) -> Iterator[None]:
    """Read timestamps without an offset as local time of zone *name* (``hl7_timezone``) within
    the block: many feeds send local time and no offset, while servers often run in UTC."""
    token = _SENDER_ZONE.set(timezone_named(name))
    try:
        yield
    finally:
        _SENDER_ZONE.reset(token)


def parse_datetime(value: str, location: str = "") -> dt.datetime | None:
    """DTM/TS (§2A.22): ``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]`` as an aware datetime.

    Without a UTC offset the value is local time of the sender: of the zone ``hl7_timezone``
    names (:func:`sender_timezone`), else of this server's zone; ``None`` for an empty value. A
    malformed value is a :class:`MappingError` naming *location* (table 0357 code 102).
    """
    text = value.strip()
    if not text:
        return None
    offset: dt.timezone | None = None
    for sign in ("+", "-"):
        cut = text.find(sign, 4)
        if cut > 0:
            zone = text[cut + 1 :]
            text = text[:cut]
            if len(zone) != 4 or not zone.isdigit():
                raise _bad_time(location)
            minutes = int(zone[:2]) * 60 + int(zone[2:])
            offset = dt.timezone(dt.timedelta(minutes=minutes if sign == "+" else -minutes))
            break
    whole, _, fraction = text.partition(".")
    if (
        not whole.isdigit()
        or len(whole) not in (4, 6, 8, 10, 12, 14)
        or (fraction and not fraction.isdigit())
    ):
        raise _bad_time(location)
    padded = whole + "0101000000"[len(whole) - 4 :] if len(whole) < 14 else whole
    try:  # int slices: strptime costs ~10x more, and an ORU has a time per OBX
        moment = dt.datetime(
            int(padded[0:4]),
            int(padded[4:6]),
            int(padded[6:8]),
            int(padded[8:10]),
            int(padded[10:12]),
            int(padded[12:14]),
            int((fraction + "000000")[:6]) if fraction else 0,
        )
    except ValueError:
        raise _bad_time(location) from None
    if offset is None:
        sender = _SENDER_ZONE.get()
        # naive: the sender's zone when configured, else this machine's
        return moment.replace(tzinfo=sender) if sender is not None else moment.astimezone()
    return moment.replace(tzinfo=offset)


def parse_date(value: str, location: str = "") -> dt.date | None:
    """A DT/DTM birth date (PID-7): only the date part counts."""
    moment = parse_datetime(value[:8] if len(value) >= 8 else value, location)
    return moment.date() if moment else None


def _bad_time(location: str) -> MappingError:
    return MappingError(
        f"{location or 'a date/time field'} is not an HL7 date/time (YYYYMMDD[HHMM[SS]][+ZZZZ])",
        code=ErrorCode.DATA_TYPE_ERROR,
        location=location,
    )


def required(segment: Segment | None, name: str, number: int) -> Segment:
    """*segment*, or a :class:`MappingError` saying segment *name* is missing."""
    if segment is None:
        raise MappingError(
            f"segment {name} missing", code=ErrorCode.SEGMENT_SEQUENCE_ERROR, location=f"{name}-{number}"
        )
    return segment
