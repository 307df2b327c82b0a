"""Read the few header attributes we index from an encoded data set, without decoding it.

A C-STORE data set arrives as bytes in the negotiated transfer syntax. Decoding all of it with
pydicom (and its pixel data) costs more than the rest of the receive path, so we walk the element
headers instead (PS3.5 §7.1 data element structure, §7.5 nesting of data sets, A.4 encapsulated
pixel data): every length must fit in the stream and top-level tags must ascend (PS3.5 §7.1),
which rejects truncated streams and bytes that are not DICOM. Only the values of the wanted
top-level elements are decoded; text in an extended character set goes through pydicom's decoder.
The stored file keeps the bytes exactly as received.
"""

from __future__ import annotations

import datetime as dt
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.uid import UID
from pydicom.valuerep import PersonName

from integrations.dicom.errors import DatasetEncodingError

#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
#: Float Pixel Data, Double Float Pixel Data, Pixel Data (PS3.3 C.7.6.3, C.7.6.24).
_PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, _PIXEL_DATA})
#: Nesting deeper than this is an attack or corruption, not a real object.
_MAX_DEPTH = 32
#: Inflating a deflated data set past this is refused (a deflate bomb, PS3.5 A.5).
MAX_INFLATED_BYTES = 2 * 1024**3

SPECIFIC_CHARACTER_SET = 0x00080005
SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
STUDY_DATE = 0x00080020
ACCESSION_NUMBER = 0x00080050
MODALITY = 0x00080060
STUDY_DESCRIPTION = 0x00081030
SERIES_DESCRIPTION = 0x0008103E
PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
ISSUER_OF_PATIENT_ID = 0x00100021
PATIENT_BIRTH_DATE = 0x00100030
PATIENT_SEX = 0x00100040
BODY_PART_EXAMINED = 0x00180015
VIEW_POSITION = 0x00185101
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
SERIES_NUMBER = 0x00200011
INSTANCE_NUMBER = 0x00200013
ROWS = 0x00280010
COLUMNS = 0x00280011

INDEXED_TAGS = (
    frozenset(
        {
            SPECIFIC_CHARACTER_SET,
            SOP_CLASS_UID,
            SOP_INSTANCE_UID,
            STUDY_DATE,
            ACCESSION_NUMBER,
            MODALITY,
            STUDY_DESCRIPTION,
            SERIES_DESCRIPTION,
            PATIENT_NAME,
            PATIENT_ID,
            ISSUER_OF_PATIENT_ID,
            PATIENT_BIRTH_DATE,
            PATIENT_SEX,
            BODY_PART_EXAMINED,
            VIEW_POSITION,
            STUDY_INSTANCE_UID,
            SERIES_INSTANCE_UID,
            SERIES_NUMBER,
            INSTANCE_NUMBER,
            ROWS,
            COLUMNS,
        }
    )
    | _PIXEL_DATA_TAGS
)


@dataclass(frozen=True)
class InstanceHeader:
    """The indexed attributes of one instance, decoded. Empty string or ``None`` when absent."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: dt.date | None = None
    patient_sex: str = ""
    accession_number: str = ""
    study_date: dt.date | None = None
    study_description: str = ""
    series_description: str = ""
    modality: str = ""
    body_part: str = ""
    view_position: str = ""
    series_number: int | None = None
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    has_pixel_data: bool = False


#: Element headers (PS3.5 §7.1.1-7.1.3): implicit VR (tag, length) and explicit VR
#: (tag, VR, 16-bit length); a long VR's 32-bit length follows the explicit header.
_IMPLICIT = {"<": struct.Struct("<HHL"), ">": struct.Struct(">HHL")}
_EXPLICIT = {"<": struct.Struct("<HH2sH"), ">": struct.Struct(">HH2sH")}
_U32 = {"<": struct.Struct("<L"), ">": struct.Struct(">L")}


class _Walker:
    """Walks one encoded data set; collects raw values of wanted top-level elements."""

    def __init__(self, buf: memoryview, little: bool, wanted: frozenset[int]) -> None:
        self.buf = buf
        self.end = len(buf)
        self.prefix = "<" if little else ">"
        self.wanted = wanted
        self.found: dict[int, tuple[str | None, bytes]] = {}

    def _fail(self, pos: int, what: str) -> DatasetEncodingError:
        return DatasetEncodingError(f"{what} at byte {pos} of {self.end}")

    def walk(self, pos: int, implicit: bool, prefix: str, depth: int, nested: bool) -> int:
        """Walk a data set from *pos*; inside an undefined-length item stop after its delimiter.

        The element header is decoded inline: this loop runs once per element of every
        received instance.
        """
        if depth > _MAX_DEPTH:
            raise self._fail(pos, "data sets nested too deeply")
        buf, end = self.buf, self.end
        implicit_of = _IMPLICIT[prefix].unpack_from
        explicit_of = _EXPLICIT[prefix].unpack_from
        long_of = _U32[prefix].unpack_from
        wanted = self.wanted if depth == 0 else frozenset()
        previous = -1
        while pos < end:
            if pos + 8 > end:
                raise self._fail(pos, "truncated element header")
            vr: bytes | None
            if implicit:
                group, element, length = implicit_of(buf, pos)
                vr = None
                pos += 8
            else:
                group, element, vr, length = explicit_of(buf, pos)
                if vr in _LONG_VRS:
                    if pos + 12 > end:
                        raise self._fail(pos, "truncated element header")
                    (length,) = long_of(buf, pos + 8)
                    pos += 12
                elif group == 0xFFFE:
                    (length,) = long_of(buf, pos + 4)
                    vr = None
                    pos += 8
                elif 65 <= vr[0] <= 90 and 65 <= vr[1] <= 90:
                    pos += 8
                else:
                    raise self._fail(pos, "invalid value representation")
            tag = group << 16 | element
            if group == 0xFFFE:
                if tag == _ITEM_DELIMITER and nested:
                    return pos
                raise self._fail(pos, "item tag inside a data set")
            if depth == 0:
                # PS3.5 §7.1: top-level elements ascend; nested ones are left to the reader.
                if tag <= previous:
                    raise self._fail(pos, f"element ({group:04X},{element:04X}) out of order")
                previous = tag
            if depth == 0 and tag in _PIXEL_DATA_TAGS:
                self.found[tag] = (None, b"")  # presence only: never copy the pixels
            if length == _UNDEFINED:
                if vr == b"UN":
                    # PS3.5 §6.2.2: a UN of undefined length holds an implicit VR sequence.
                    pos = self._walk_items(pos, True, "<", depth + 1, encapsulated=False)
                elif tag == _PIXEL_DATA and not implicit:
                    pos = self._walk_items(pos, implicit, prefix, depth + 1, encapsulated=True)
                elif vr is None or vr == b"SQ":
                    pos = self._walk_items(pos, implicit, prefix, depth + 1, encapsulated=False)
                else:
                    raise self._fail(pos, "undefined length on a non-sequence element")
                continue
            if pos + length > end:
                raise self._fail(pos, f"value of {length} bytes runs past the end of the data set")
            if tag in wanted and tag not in _PIXEL_DATA_TAGS:
                self.found[tag] = (vr.decode() if vr else None, bytes(buf[pos : pos + length]))
            pos += length
        if nested:
            raise self._fail(pos, "item without its delimiter")
        return pos

    def _walk_items(self, pos: int, implicit: bool, prefix: str, depth: int, encapsulated: bool) -> int:
        """Walk the items of an undefined-length sequence or encapsulated pixel data."""
        item_of = _IMPLICIT[prefix].unpack_from
        while True:
            if pos + 8 > self.end:
                raise self._fail(pos, "truncated item header")
            group, element, length = item_of(self.buf, pos)
            tag = group << 16 | element
            pos += 8
            if tag == _SEQUENCE_DELIMITER:
                return pos
            if tag != _ITEM:
                raise self._fail(pos - 8, "expected an item or a sequence delimiter")
            if length == _UNDEFINED:
                if encapsulated:
                    raise self._fail(pos, "undefined-length fragment in encapsulated pixel data")
                pos = self.walk(pos, implicit, prefix, depth, nested=True)
                continue
            if pos + length > self.end:
                raise self._fail(pos, f"item of {length} bytes runs past the end of the data set")
            pos += length


def inflate(raw: bytes | memoryview) -> bytes:
    """Inflate a Deflated Explicit VR Little Endian data set (PS3.5 A.5, raw RFC 1951)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        data = inflater.decompress(raw, MAX_INFLATED_BYTES)
        data += inflater.flush()
    except zlib.error as exc:
        raise DatasetEncodingError(f"deflated data set does not inflate: {exc}") from exc
    if inflater.unconsumed_tail:
        raise DatasetEncodingError("deflated data set inflates past the size limit")
    if not inflater.eof:
        raise DatasetEncodingError("deflated data set is truncated")
    return data


def scan(
    raw: bytes | memoryview, transfer_syntax: str, wanted: Iterable[int] = INDEXED_TAGS
) -> dict[int, bytes]:
    """Check the structure of the encoded data set *raw*; return the raw values of its *wanted*
    top-level elements.

    Raises :class:`DatasetEncodingError` when the stream is empty, truncated or not DICOM.
    """
    ts = UID(transfer_syntax)
    if ts.is_deflated:
        raw = inflate(raw)
    buf = memoryview(raw).cast("B")
    if len(buf) < 8:
        raise DatasetEncodingError("empty or truncated data set")
    walker = _Walker(buf, bool(ts.is_little_endian), frozenset(wanted))
    walker.walk(0, bool(ts.is_implicit_VR), walker.prefix, 0, nested=False)
    return {tag: value for tag, (_vr, value) in walker.found.items()}


#: Character repertoires that decode as a plain codec without code extensions (PS3.3 C.12.1.1.2).
_PLAIN_CHARSETS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}
_TEXT_DELIMITERS = {0x5C}  # "\\" separates values


class _Decoder:
    def __init__(self, values: dict[int, bytes]) -> None:
        self.values = values
        charsets = self.ascii(SPECIFIC_CHARACTER_SET).split("\\")
        self.codec = _PLAIN_CHARSETS.get(charsets[0]) if len(charsets) == 1 else None
        self.encodings = convert_encodings(charsets if any(charsets) else None)

    def ascii(self, tag: int) -> str:
        return self.values.get(tag, b"").decode("ascii", "replace").strip("\x00 ")

    def text(self, tag: int, delimiters: set[int] = _TEXT_DELIMITERS) -> str:
        """SH, LO (PS3.5 §6.1.2.5.3): one codec, or pydicom's ISO 2022 decoder."""
        value = self.values.get(tag, b"")
        if self.codec:
            text = value.decode(self.codec, "replace")
        else:
            try:
                text = decode_bytes(value, self.encodings, delimiters)
            except Exception:  # a wrong character set never refuses the instance
                text = value.decode("latin-1")
        return text.strip("\x00 ")

    def person_name(self, tag: int) -> str:
        """PN (PS3.5 §6.2.1): pydicom's decoder, which also drops empty trailing groups."""
        value = self.values.get(tag, b"").rstrip(b"\x00 ")
        try:
            return str(PersonName(value, self.encodings)).strip() if value else ""
        except Exception:  # a wrong character set never refuses the instance
            return value.decode("latin-1").strip()

    def integer(self, tag: int) -> int | None:
        text = self.ascii(tag).split("\\")[0].strip()
        try:
            return int(text) if text else None
        except ValueError:
            return None

    def unsigned_short(self, tag: int, little: bool) -> int | None:
        value = self.values.get(tag, b"")
        return int.from_bytes(value[:2], "little" if little else "big") if len(value) >= 2 else None

    def date(self, tag: int) -> dt.date | None:
        text = self.ascii(tag)
        try:
            return dt.datetime.strptime(text[:8], "%Y%m%d").date() if len(text) >= 8 else None
        except ValueError:
            return None


def read_header(raw: bytes | memoryview, transfer_syntax: str) -> InstanceHeader:
    """Scan *raw* (see :func:`scan`) and decode the indexed attributes.

    Values are decoded here rather than by pydicom's element conversion, which costs several
    times the scan itself; text in a non-default character set goes through pydicom's decoder.
    """
    little = bool(UID(transfer_syntax).is_little_endian)
    d = _Decoder(scan(raw, transfer_syntax))
    return InstanceHeader(
        sop_class_uid=d.ascii(SOP_CLASS_UID),
        sop_instance_uid=d.ascii(SOP_INSTANCE_UID),
        study_uid=d.ascii(STUDY_INSTANCE_UID),
        series_uid=d.ascii(SERIES_INSTANCE_UID),
        patient_id=d.text(PATIENT_ID),
        issuer_of_patient_id=d.text(ISSUER_OF_PATIENT_ID),
        patient_name=d.person_name(PATIENT_NAME),
        patient_birth_date=d.date(PATIENT_BIRTH_DATE),
        patient_sex=d.ascii(PATIENT_SEX),
        accession_number=d.text(ACCESSION_NUMBER),
        study_date=d.date(STUDY_DATE),
        study_description=d.text(STUDY_DESCRIPTION),
        series_description=d.text(SERIES_DESCRIPTION),
        modality=d.ascii(MODALITY),
        body_part=d.ascii(BODY_PART_EXAMINED),
        view_position=d.ascii(VIEW_POSITION),
        series_number=d.integer(SERIES_NUMBER),
        instance_number=d.integer(INSTANCE_NUMBER),
        rows=d.unsigned_short(ROWS, little),
        columns=d.unsigned_short(COLUMNS, little),
        has_pixel_data=any(tag in d.values for tag in _PIXEL_DATA_TAGS),
    )
