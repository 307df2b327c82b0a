"""WADO-RS, the Retrieve transactions (PS3.18 §10.4): instances, metadata, frames, bulk data and
rendered images of stored instances.

Instances are streamed from their files as stored (PS3.10, transfer syntax as received) when the
Accept header allows it (``transfer-syntax=*`` or the stored syntax); otherwise they are transcoded
to Explicit VR Little Endian, the default of ``application/dicom`` (PS3.18 §8.7.3.5.2), decoding
compressed pixel data with pydicom's plugins. Frames are sent uncompressed
(``application/octet-stream``) unless a compressed media type or ``transfer-syntax=*`` is
accepted. Rendered images reuse :mod:`clinic.imaging.render` (PS3.18 §8.3.5 ``window`` and
``viewport``).
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import get_decoder
from pydicom.pixels.utils import pack_bits, pixel_array, unpack_bits
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from clinic.imaging.models import Instance, Series, Study
from clinic.imaging.render import MAX_RENDER_SIZE, ImageFormat, Window, encode_image, render_image
from integrations.dicom.dicomweb.json_model import MetadataCache, StoredInstance, with_base
from integrations.dicom.dicomweb.multipart import MediaType, closing_delimiter, part_header

LOGGER = logging.getLogger(__name__)

#: Files are streamed in pieces of this size.
CHUNK_BYTES = 1024 * 1024

OCTET_STREAM = "application/octet-stream"
DICOM = "application/dicom"
_NATIVE_LE = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})

#: Media types of compressed pixel data (PS3.18 Table 8.7.3-2; "image/dicom-rle" for RLE).
COMPRESSED_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


class NotAcceptableError(Exception):
    """Nothing the Accept header admits can be produced (HTTP 406)."""


class RetrieveError(Exception):
    """A request that names something that is not there or cannot be served: *status_code*."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason


# --- resolving ------------------------------------------------------------------------------


def find_instances(
    session: Session,
    data_dir: Path,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> list[StoredInstance]:
    """The stored instances of a study, series or one instance, in series and instance order."""
    statement = (
        select(
            Study.study_uid,
            Series.series_uid,
            Instance.sop_instance_uid,
            Instance.sop_class_uid,
            Instance.transfer_syntax_uid,
            Instance.file_path,
            Study.patient_id,
            Instance.rows,
            Instance.columns,
            Instance.instance_number,
        )
        .select_from(Instance)
        .join(Series, Series.id == Instance.series_id)
        .join(Study, Study.id == Series.study_id)
        .where(Study.study_uid == study_uid)
        .order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
    )
    if series_uid is not None:
        statement = statement.where(Series.series_uid == series_uid)
    if sop_uid is not None:
        statement = statement.where(Instance.sop_instance_uid == sop_uid)
    found = []
    for row in session.execute(statement):
        path = (data_dir / row.file_path).resolve()
        if not path.is_relative_to(data_dir):  # a row can never send us outside the data dir
            LOGGER.error("instance %s has a file path outside the data dir", row.sop_instance_uid)
            continue
        found.append(
            StoredInstance(
                study_uid=row.study_uid,
                series_uid=row.series_uid,
                sop_instance_uid=row.sop_instance_uid,
                sop_class_uid=row.sop_class_uid,
                transfer_syntax_uid=row.transfer_syntax_uid,
                path=path,
                patient_id=row.patient_id,
                rows=row.rows,
                columns=row.columns,
                instance_number=row.instance_number,
            )
        )
    if not found:
        raise RetrieveError(404, "no such study, series or instance")
    return found


# --- instances --------------------------------------------------------------------------------


def dicom_transfer_syntaxes(accept: Sequence[MediaType], single: bool) -> tuple[list[str], bool]:
    """The transfer syntaxes (``*`` for any) acceptable for ``application/dicom`` parts, best
    first, and whether a bare, single-part ``application/dicom`` body is wanted (PS3.18 §8.7.3)."""
    syntaxes: list[str] = []
    bare = False
    for media in accept:
        if media.type == "multipart/related":
            if media.param("type", DICOM).lower() not in (DICOM, "*/*"):
                continue
        elif media.type == DICOM:
            bare = bare or (single and not syntaxes)
        elif media.type not in ("*/*", "application/*", "multipart/*"):
            continue
        syntaxes.append(media.param("transfer-syntax", ExplicitVRLittleEndian))
    if not syntaxes:
        raise NotAcceptableError('only multipart/related; type="application/dicom" is served here')
    return syntaxes, bare


def choose_transfer_syntax(stored: str, acceptable: Sequence[str]) -> str:
    """The stored syntax when acceptable (or ``*``); else one we transcode to (little endian)."""
    if "*" in acceptable or stored in acceptable:
        return stored
    for target in acceptable:
        if target in _NATIVE_LE and _can_decode(stored):
            return target
    raise NotAcceptableError(f"instances stored as {stored} cannot be sent in the accepted transfer syntaxes")


def _can_decode(transfer_syntax: str) -> bool:
    uid = UID(transfer_syntax)
    if not uid.is_compressed:
        return True
    try:
        return bool(get_decoder(uid).is_available)
    except (NotImplementedError, ValueError):
        return False


def transcode(path: Path, target: str) -> bytes:
    """The file at *path* re-encoded as *target* (Explicit or Implicit VR Little Endian), its
    pixel data decoded first when compressed (PS3.5 §10, PS3.18 §8.7.3.5.2)."""
    ds = dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    ds.file_meta.TransferSyntaxUID = UID(target)
    buffer = io.BytesIO()
    ds.save_as(
        buffer, implicit_vr=target == ImplicitVRLittleEndian, little_endian=True, enforce_file_format=True
    )
    return buffer.getvalue()


def stream_instances(
    instances: Sequence[StoredInstance], syntaxes: Sequence[str], boundary: str | None
) -> Iterator[bytes]:
    """The instances as ``multipart/related`` parts (or one bare body when *boundary* is None)."""
    for number, (instance, target) in enumerate(zip(instances, syntaxes, strict=True)):
        if boundary is not None:
            yield part_header(boundary, f"{DICOM}; transfer-syntax={target}", first=number == 0)
        if target == instance.transfer_syntax_uid:
            with open(instance.path, "rb") as handle:
                while chunk := handle.read(CHUNK_BYTES):
                    yield chunk
        else:
            yield transcode(instance.path, target)
    if boundary is not None:
        yield closing_delimiter(boundary)


def metadata(instances: Sequence[StoredInstance], base: str, cache: MetadataCache) -> bytes:
    """The JSON array of the instances' headers (PS3.18 §10.4.1.2 ``/metadata``)."""
    pieces = []
    for instance in instances:
        try:
            pieces.append(cache.instance(instance))
        except (OSError, EOFError, ValueError) as exc:
            LOGGER.error("metadata of %s unreadable: %s", instance.sop_instance_uid, type(exc).__name__)
    return with_base(b"[" + b",".join(pieces) + b"]", base)


# --- frames and bulk data ---------------------------------------------------------------------

_FRAME_LIST_RE = re.compile(r"\d+(,\d+)*\Z")


def frame_numbers(text: str) -> list[int]:
    """A frame list of the URL (PS3.18 §10.4.1.1.4): 1-based, comma-separated."""
    if not _FRAME_LIST_RE.match(text) or len(text) > 10_000:
        raise RetrieveError(400, "frame list must be comma-separated frame numbers")
    numbers = [int(n) for n in text.split(",")]
    if min(numbers) < 1:
        raise RetrieveError(400, "frame numbers start at 1")
    return numbers


@dataclass(frozen=True)
class FrameChoice:
    """How to send frames: compressed as stored, or uncompressed little endian."""

    compressed: bool


def choose_frames(accept: Sequence[MediaType], stored: str) -> FrameChoice:
    """PS3.18 §8.7.3.3.2 bulk data media types: ``application/octet-stream`` (uncompressed
    unless ``transfer-syntax=*`` or the stored syntax) or the stored syntax's image type."""
    stored_media = COMPRESSED_MEDIA_TYPES.get(stored)
    for media in accept:
        wanted = (
            media.param("type", OCTET_STREAM).lower() if media.type == "multipart/related" else media.type
        )
        syntax = media.param("transfer-syntax")
        if wanted in (OCTET_STREAM, "*/*", "application/*"):
            return FrameChoice(compressed=bool(stored_media) and syntax in ("*", stored))
        if stored_media and (wanted == stored_media or wanted == "image/*") and syntax in ("", "*", stored):
            return FrameChoice(compressed=True)
    raise NotAcceptableError("frames are served as application/octet-stream or in their stored compression")


def _native_frame(ds: Dataset, index: int, count: int) -> bytes:
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples, bits = int(ds.get("SamplesPerPixel", 1)), int(ds.BitsAllocated)
    pixels = rows * columns * samples
    data = ds.PixelData
    if bits == 1:  # frames of 1-bit data need not start on a byte boundary (PS3.5 §8.1.1)
        start = index * pixels
        if start % 8 == 0:
            return bytes(data[start // 8 : (start + pixels + 7) // 8])
        unpacked = np.asarray(unpack_bits(data, as_array=True))[start : start + pixels]
        return pack_bits(unpacked)
    length = pixels * bits // 8
    return bytes(data[index * length : (index + 1) * length])


def read_frames(
    instance: StoredInstance, numbers: Sequence[int] | None, choice: FrameChoice
) -> list[tuple[str, bytes]]:
    """``(content type, bytes)`` for each frame number (PS3.18 §10.4.1.1.4); ``None``: all."""
    ds = dcmread(instance.path)
    if "PixelData" not in ds:
        raise RetrieveError(400, "the instance has no pixel data, so no frames")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    numbers = list(range(1, count + 1)) if numbers is None else numbers
    if max(numbers) > count:
        raise RetrieveError(404, f"the instance has {count} frame(s)")
    stored = str(ds.file_meta.TransferSyntaxUID)
    if choice.compressed:
        media = COMPRESSED_MEDIA_TYPES[stored]
        return [
            (f"{media}; transfer-syntax={stored}", get_frame(ds.PixelData, n - 1, number_of_frames=count))
            for n in numbers
        ]
    content_type = f"{OCTET_STREAM}; transfer-syntax={ExplicitVRLittleEndian}"
    if stored in _NATIVE_LE:
        return [(content_type, _native_frame(ds, n - 1, count)) for n in numbers]
    if not _can_decode(stored):
        raise NotAcceptableError(f"frames stored as {stored} cannot be decoded here")
    frames = []
    for n in numbers:
        array = np.asarray(pixel_array(ds, index=n - 1))
        frames.append((content_type, array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()))
    return frames


def _find_element(ds: Dataset, tag: int) -> DataElement | None:
    """The element *tag* at the top level, else the first one nested in a sequence (depth first)."""
    if tag in ds:
        return ds[tag]
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                found = _find_element(item, tag)
                if found is not None:
                    return found
    return None


def read_bulk_data(instance: StoredInstance, tag: int) -> bytes:
    """The value of a bulk data element named by a metadata BulkDataURI (PS3.18 §10.4.1.1.5)."""
    ds = dcmread(instance.path)
    elem = _find_element(ds, tag)
    if elem is None or not isinstance(elem.value, bytes | bytearray):
        raise RetrieveError(404, "no such bulk data element")
    return bytes(elem.value)


# --- rendered ---------------------------------------------------------------------------------

_WINDOW_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}


def rendered_format(accept: Sequence[MediaType]) -> ImageFormat:
    """PS3.18 §8.7.4: image/jpeg is the default rendered media type; image/png also served."""
    for media in accept:
        if media.type in ("image/jpeg", "image/*", "*/*"):
            return ImageFormat.JPEG
        if media.type == "image/png":
            return ImageFormat.PNG
    raise NotAcceptableError("rendered images are served as image/jpeg or image/png")


@dataclass(frozen=True)
class RenderParams:
    """``window``, ``viewport`` and ``quality`` query parameters (PS3.18 §8.3.5.1)."""

    window: Window | None = None
    function: str | None = None
    viewport: tuple[int, int] | None = None
    quality: int = 90

    @classmethod
    def parse(cls, window: str | None, viewport: str | None, quality: str | None) -> RenderParams:
        parsed_window, function = None, None
        if window:
            pieces = [p.strip() for p in window.split(",")]
            try:
                if len(pieces) not in (2, 3):
                    raise ValueError("window is center,width[,function]")
                parsed_window = Window(float(pieces[0]), float(pieces[1]))
                if len(pieces) == 3:
                    function = _WINDOW_FUNCTIONS[pieces[2].lower()]
            except (ValueError, KeyError) as exc:
                raise RetrieveError(400, f"invalid window parameter: {exc}") from exc
        size = None
        if viewport:
            pieces = [p.strip() for p in viewport.split(",")]
            if len(pieces) == 6 and all(p == "" for p in pieces[2:]):
                pieces = pieces[:2]
            if len(pieces) != 2 or not all(p.isdigit() and 0 < int(p) <= MAX_RENDER_SIZE for p in pieces):
                raise RetrieveError(400, f"viewport must be width,height up to {MAX_RENDER_SIZE} pixels")
            size = (int(pieces[0]), int(pieces[1]))
        level = 90
        if quality:
            if not quality.isdigit() or not 1 <= int(quality) <= 100:
                raise RetrieveError(400, "quality must be 1 to 100")
            level = int(quality)
        return cls(parsed_window, function, size, level)


def output_size(rows: int, columns: int, viewport: tuple[int, int] | None) -> tuple[int, int]:
    """(width, height): the image scaled to fit the viewport, aspect kept (PS3.18 §8.3.5.1.3)."""
    if viewport is None:
        factor = min(1.0, MAX_RENDER_SIZE / max(rows, columns))
    else:
        factor = min(viewport[0] / columns, viewport[1] / rows)
    return max(1, round(columns * factor)), max(1, round(rows * factor))


def render(instance: StoredInstance, frame: int, params: RenderParams, fmt: ImageFormat) -> bytes:
    """Frame *frame* (1-based) rendered per *params* as JPEG or PNG bytes."""
    if instance.rows is None or instance.columns is None:
        raise NotAcceptableError("the instance is not an image: it has no rendered image representation")
    width, height = output_size(instance.rows, instance.columns, params.viewport)
    render_size = min(max(width, height), max(instance.rows, instance.columns), MAX_RENDER_SIZE)
    image = render_image(
        instance.path,
        window=params.window,
        max_size=render_size,
        frame=frame - 1,
        voi_function=params.function,
    )
    if image.size != (width, height):  # upscaling to the viewport, or a rounding difference
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return encode_image(image, fmt, quality=params.quality)
