"""The DICOM JSON model (PS3.18 Annex F) and the cache of stored instances' metadata.

Attributes are keyed by their tag as eight upper-case hex digits; each holds its ``vr`` and, when
not empty, ``Value`` (PN values as ``{"Alphabetic": ...}`` objects, F.2.2; numbers for IS/DS, F.2.3),
``InlineBinary`` (base64) or ``BulkDataURI`` (F.2.7). Whole instances are converted by pydicom's
``to_json_dict``; the query responses build their attributes with :func:`element`.

Speed (a viewer asks for the metadata of a 300-instance series at once): reading a 0.5 MB CT
header with ``dcmread(stop_before_pixels=True)`` costs ~0.8 ms and converting it ~2 ms, so each
instance's JSON is converted once and kept, serialised, in a process-wide LRU keyed by the file's
path, mtime and size (a re-sent instance replaces its file, so its key changes). Bulk data URIs
are kept with a placeholder base that the response replaces with the request's base URL.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

#: Binary values longer than this are referenced by a BulkDataURI instead of inlined (F.2.7).
BULK_DATA_THRESHOLD = 1024

#: Stands for the request's DICOMweb base URL in cached JSON (replaced in :func:`with_base`).
PLACEHOLDER_BASE = "urn:x-clinic-dicomweb-base"
_BULK_KEY = b'"BulkDataURI":"'

PIXEL_DATA = 0x7FE00010

JsonObject = dict[str, Any]


def tag_key(tag: int) -> str:
    """The JSON key of a tag (F.2.1.1): eight upper-case hex digits."""
    return f"{tag:08X}"


def element(vr: str, values: Iterable[Any] | None = None) -> JsonObject:
    """One attribute; without values it is present but empty (F.2.5: zero-length)."""
    items = [v for v in (values or ()) if v is not None and v != ""]
    return {"vr": vr, "Value": items} if items else {"vr": vr}


def person_name(name: str) -> JsonObject | None:
    """A PN value (F.2.2): the ``=``-separated groups as Alphabetic, Ideographic, Phonetic."""
    if not name:
        return None
    groups = name.split("=")
    value = {
        key: group for key, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False)
    }
    return {key: group for key, group in value.items() if group} or None


def date_value(value: dt.date | None) -> str | None:
    return value.strftime("%Y%m%d") if value else None


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON (F.2: the character set of the JSON model is UTF-8)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def with_base(payload: bytes, base_url: str) -> bytes:
    """Put the request's base URL (``.../dicomweb``) into cached bulk data URIs."""
    if PLACEHOLDER_BASE.encode() not in payload:
        return payload
    escaped = json.dumps(base_url)[1:-1].encode("utf-8")
    return payload.replace(_BULK_KEY + PLACEHOLDER_BASE.encode(), _BULK_KEY + escaped)


@dataclass(frozen=True)
class StoredInstance:
    """A stored instance as the WADO routes know it from the database."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path
    patient_id: int
    rows: int | None = None
    columns: int | None = None
    instance_number: int | None = None

    def url(self, base: str) -> str:
        return f"{base}/studies/{self.study_uid}/series/{self.series_uid}/instances/{self.sop_instance_uid}"


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path), stat.st_mtime_ns, stat.st_size


def _pixel_data_vr(bits_allocated: object, transfer_syntax: str) -> str:
    """PS3.5 §8.2: encapsulated Pixel Data is OB; native is OW above 8 bits allocated."""
    try:
        encapsulated = bool(UID(transfer_syntax).is_compressed)
    except (ValueError, AttributeError):
        encapsulated = False
    if encapsulated:
        return "OB"
    return "OW" if isinstance(bits_allocated, int) and bits_allocated > 8 else "OB"


# --- a fast Dataset -> JSON conversion ---------------------------------------------------------

_STRINGS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "SH", "LO", "UC"})
_TEXTS = frozenset({"ST", "LT", "UT", "UR"})
_CHARSET_VRS = frozenset({"SH", "LO", "UC", "ST", "LT", "UT", "PN"})
_BINARY = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_NUMBERS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
#: Character sets (0008,0005) whose text decodes as one plain codec (PS3.3 C.12.1.1.2).
_CODECS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}


class _Fallback(Exception):
    """An element the fast path does not handle: pydicom converts it."""


def _vr_of(raw: RawDataElement) -> str:
    if raw.VR == "UN":
        raise _Fallback  # pydicom replaces UN by the VR its dictionaries know
    if raw.VR:
        return str(raw.VR)
    try:
        vr = str(dictionary_VR(raw.tag))
    except KeyError:
        return "UN"  # a private tag in an implicit VR data set (PS3.5 §6.2.2)
    if " or " in vr:  # ambiguous (US or SS, OB or OW): pydicom resolves it from the data set
        raise _Fallback
    return vr


def _strings(text: str, vr: str) -> list[str | None]:
    values = [v.strip(" \x00") if vr != "UI" else v.strip("\x00 ") for v in text.split("\\")]
    return [v if v else None for v in values]


def _raw_json(raw: RawDataElement, vr: str, codec: str | None, bulk: Callable[[int], str]) -> JsonObject:
    """One raw element (bytes as in the file) in the JSON model, without pydicom's conversion."""
    data: bytes = raw.value or b""
    if not data:
        return {"vr": vr}
    if vr in _BINARY:
        # pydicom's rule: base64 grows by a third, so the threshold is on 3/4 of the JSON size.
        if len(data) > (BULK_DATA_THRESHOLD // 4) * 3:
            return {"vr": vr, "BulkDataURI": bulk(int(raw.tag))}
        return {"vr": vr, "InlineBinary": base64.b64encode(data).decode("ascii")}
    if vr in _NUMBERS:
        code = _NUMBERS[vr]
        size = struct.calcsize("<" + code)
        if len(data) % size:
            raise _Fallback
        order = "<" if raw.is_little_endian else ">"
        return {"vr": vr, "Value": list(struct.unpack(f"{order}{len(data) // size}{code}", data))}
    if vr == "AT":
        order = "<" if raw.is_little_endian else ">"
        pairs = struct.unpack(f"{order}{len(data) // 2}H", data[: len(data) // 4 * 4])
        return {"vr": vr, "Value": [f"{pairs[i]:04X}{pairs[i + 1]:04X}" for i in range(0, len(pairs), 2)]}
    if vr in _CHARSET_VRS and codec is None:
        raise _Fallback  # ISO 2022 code extensions: pydicom's decoder
    text = data.decode(codec or "latin-1")
    if vr in _TEXTS:
        value = text.rstrip(" \x00")
        return {"vr": vr, "Value": [value]} if value else {"vr": vr}
    if vr == "PN":
        names = [person_name(v.rstrip(" \x00")) for v in text.split("\\")]
        return {"vr": vr, "Value": names} if any(names) else {"vr": vr}
    if vr in ("IS", "DS"):
        numbers: list[int | float | None] = []
        for item in _strings(text, vr):
            numbers.append(None if item is None else int(item) if vr == "IS" else float(item))
        if any(isinstance(n, float) and not math.isfinite(n) for n in numbers):
            raise _Fallback
        return {"vr": vr, "Value": numbers} if any(n is not None for n in numbers) else {"vr": vr}
    if vr in _STRINGS:
        strings = _strings(text, vr)
        return {"vr": vr, "Value": strings} if any(strings) else {"vr": vr}
    raise _Fallback


def dataset_json(ds: Dataset, bulk: Callable[[int], str], codec: str | None = "latin-1") -> JsonObject:
    """*ds* in the JSON model (F.2), converting its raw elements directly.

    pydicom's ``to_json_dict`` builds a full DataElement per element first (~2 ms for a CT
    header of 256 elements here, 90 % of a metadata answer); this reads the raw bytes by VR and
    hands pydicom only what it alone does right: sequences' item parsing, ambiguous VRs, text in
    ISO 2022 character sets and malformed values. Group lengths are left out (F.2.1).
    """
    if "SpecificCharacterSet" in ds:
        charset = ds.SpecificCharacterSet
        charset = charset if isinstance(charset, str) else "\\".join(charset)
        codec = _CODECS.get(charset.strip())
    body: JsonObject = {}
    for tag in ds.keys():
        if tag.element == 0:
            continue
        raw = ds.get_item(tag)
        try:
            if not isinstance(raw, RawDataElement):
                raise _Fallback
            vr = _vr_of(raw)
            if vr == "SQ":
                items = [dataset_json(item, bulk, codec) for item in ds[tag].value]
                body[tag_key(tag)] = {"vr": vr, "Value": items} if items else {"vr": vr}
                continue
            body[tag_key(tag)] = _raw_json(raw, vr, codec, bulk)
        except (_Fallback, ValueError, UnicodeDecodeError, struct.error):
            try:
                body[tag_key(tag)] = ds[tag].to_json_dict(lambda e: bulk(int(e.tag)), BULK_DATA_THRESHOLD)
            except Exception:  # noqa: BLE001 - an unreadable element is left out (suppress_invalid_tags)
                continue
    return body


def instance_json(instance: StoredInstance) -> JsonObject:
    """The whole header of a stored instance in the JSON model; Pixel Data and other bulk data
    become BulkDataURIs under the instance's ``/bulkdata/{tag}`` (with the placeholder base)."""
    ds = dcmread(instance.path, stop_before_pixels=True)
    bulk = f"{instance.url(PLACEHOLDER_BASE)}/bulkdata/"
    body = dataset_json(ds, lambda tag: bulk + tag_key(tag))
    if instance.rows is not None and instance.columns is not None and ds.get("SOPClassUID"):
        # stop_before_pixels leaves Pixel Data out; the database says the instance has an image.
        vr = _pixel_data_vr(ds.get("BitsAllocated"), instance.transfer_syntax_uid)
        body[tag_key(PIXEL_DATA)] = {"vr": vr, "BulkDataURI": bulk + tag_key(PIXEL_DATA)}
    return dict(sorted(body.items()))


class _LRU:
    """A thread-safe LRU bounded by the summed sizes of its values."""

    def __init__(self, capacity: int, size_of: Callable[[Any], int]) -> None:
        self.capacity = capacity
        self._size_of = size_of
        self._items: OrderedDict[tuple[object, ...], Any] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[object, ...]) -> Any | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[object, ...], value: Any) -> None:
        size = self._size_of(value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._used -= self._size_of(old)
            self._items[key] = value
            self._used += size
            while self._used > self.capacity and len(self._items) > 1:
                _key, dropped = self._items.popitem(last=False)
                self._used -= self._size_of(dropped)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._used = 0


class MetadataCache:
    """Serialised instance JSON and a few header attributes of stored files, per file version."""

    def __init__(self, capacity_bytes: int = 256 * 1024**2, header_entries: int = 200_000) -> None:
        self._json = _LRU(capacity_bytes, len)
        self._headers = _LRU(header_entries, lambda _v: 1)

    def instance(self, instance: StoredInstance) -> bytes:
        """The instance's JSON object, serialised (placeholder base in bulk data URIs)."""
        key = _file_key(instance.path)
        cached: bytes | None = self._json.get(key)
        if cached is None:
            cached = dumps(instance_json(instance))
            self._json.put(key, cached)
        return cached

    def attributes(self, path: Path, tags: frozenset[int]) -> Mapping[str, JsonObject]:
        """The JSON of the attributes *tags* (top level) in the file at *path*: for the query
        responses' attributes that the database does not index (StudyTime, NumberOfFrames, ...).
        Taken from the whole header's JSON when that is cached, else read with pydicom's
        ``specific_tags`` (~0.8 ms for a CT header); kept per file version and tag set."""
        key = (*_file_key(path), tags)
        cached: dict[str, JsonObject] | None = self._headers.get(key)
        if cached is None:
            wanted = {tag_key(t) for t in tags}
            full: bytes | None = self._json.get(key[:3])
            if full is not None:
                cached = {k: v for k, v in json.loads(full).items() if k in wanted}
            else:
                ds = dcmread(path, stop_before_pixels=True, specific_tags=sorted(tags))
                found = dataset_json(ds, lambda _tag: "")
                cached = {k: v for k, v in found.items() if k in wanted and "BulkDataURI" not in v}
            self._headers.put(key, cached)
        return cached

    def clear(self) -> None:
        self._json.clear()
        self._headers.clear()


#: One cache per process: the web server's workers share it.
METADATA_CACHE = MetadataCache()
