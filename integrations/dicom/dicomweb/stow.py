"""STOW-RS, the Studies Store transaction (PS3.18 §10.5), on the C-STORE SCP's store path.

Each ``application/dicom`` part is a PS3.10 file. Its data set goes through
:func:`integrations.dicom.scp.store_instance`, the function behind our C-STORE SCP: the same
checks, the same durable write (temporary file, fsync, rename) and the same committed row before
the instance is acknowledged in the response (DESIGN.md §4 rule 1). A refused part leaves no file
and no row, and is recorded as a ``receive_failures`` row of channel ``dicomweb-stow`` (rule 4).

The framing of the whole request is checked before any part is stored (see
:func:`integrations.dicom.dicomweb.multipart.split_multipart`): a truncated or garbled body is
refused as a whole with 400, and nothing of it is stored.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from pydicom.uid import SegmentationStorage
from sqlalchemy.orm import Session, sessionmaker

from clinic.db import unit_of_work
from clinic.imaging.service import record_failure
from integrations.dicom.dicomweb.json_model import JsonObject, element
from integrations.dicom.dicomweb.multipart import MediaType, MediaTypeError, Part
from integrations.dicom.errors import DatasetEncodingError, DicomReceiveError
from integrations.dicom.header import read_header
from integrations.dicom.scp import (
    NON_IMAGE_SOP_CLASSES,
    STORAGE_SOP_CLASSES,
    TRANSFER_SYNTAXES,
    StoreContext,
    safe_reason,
    store_instance,
)
from integrations.dicom.status import StoreStatus, store_status_for

LOGGER = logging.getLogger(__name__)

#: ``receive_failures.channel`` of this service.
CHANNEL = "dicomweb-stow"

#: What STOW-RS stores: the SCP's image classes, SR documents and key object selections (the
#: AI result SRs are stored as normal instances) and Segmentation (the AI masks).
STOW_SOP_CLASSES: frozenset[str] = (
    frozenset(STORAGE_SOP_CLASSES) | NON_IMAGE_SOP_CLASSES | frozenset({SegmentationStorage})
)

#: Largest request body accepted (HTTP 413 above). A whole CT study of 600 0.5 MB slices is
#: ~300 MB; bodies above :data:`SPOOL_THRESHOLD` wait in a temporary file, not in memory.
MAX_STOW_BYTES = 2 * 1024**3
SPOOL_THRESHOLD = 32 * 1024**2

#: PS3.18 §10.5.1: the media type of the parts this server stores.
DICOM_MEDIA_TYPE = "application/dicom"

_PREAMBLE_LENGTH = 128
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_META_ELEMENT = struct.Struct("<HH2sH")


class FailureReason(IntEnum):
    """Failure Reason (0008,1197) values of the Store Instances Response (PS3.18 Table I.2-2)."""

    PROCESSING_FAILURE = 0x0110
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
    #: An additional code (I.2.2 allows them): the instance belongs to another study than the
    #: one in the request's URL (PS3.18 §10.5.3, 409 "Study Instance UID mismatch"); dcm4chee's value.
    STUDY_INSTANCE_UID_MISMATCH = 0xC409


class TransferSyntaxNotSupportedError(DicomReceiveError):
    """The part's File Meta names a transfer syntax we do not store (PS3.18 I.2.2, C122)."""


class StudyMismatchError(DicomReceiveError):
    """The instance's Study Instance UID differs from the study of the request URL."""


class StowRequestError(Exception):
    """The request as a whole is refused (nothing stored): *status_code* is 400, 413 or 415."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason


@dataclass(frozen=True)
class FileMeta:
    """What a part's File Meta Information (PS3.10 §7.1) says about its data set."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


def _ui(value: bytes) -> str:
    return value.decode("ascii", "replace").strip("\x00 ")


def parse_part10(content: memoryview) -> tuple[FileMeta, memoryview]:
    """Split a PS3.10 file into its File Meta Information and the encoded data set after it.

    The File Meta group is always Explicit VR Little Endian (PS3.10 §7.1). Some clients
    (pydicom's ``dcmwrite`` of a data set read from no file, as dicomweb-client sends it) leave
    out the preamble and ``DICM``: a part that starts with the File Meta group is accepted too.
    Raises :class:`DatasetEncodingError` when *content* is not a PS3.10 file.
    """
    if len(content) >= _PREAMBLE_LENGTH + 4 and bytes(content[128:132]) == b"DICM":
        pos = _PREAMBLE_LENGTH + 4
    elif bytes(content[:2]) == b"\x02\x00":
        pos = 0
    else:
        raise DatasetEncodingError("not a DICOM PS3.10 file (no 'DICM' prefix after the 128-byte preamble)")
    end = len(content)
    values: dict[int, bytes] = {}
    while pos + 8 <= end:
        group, number, vr, length = _META_ELEMENT.unpack_from(content, pos)
        if group != 0x0002:
            break
        header = 8
        if vr in _LONG_VRS:
            if pos + 12 > end:
                raise DatasetEncodingError("truncated File Meta Information")
            (length,) = struct.unpack_from("<L", content, pos + 8)
            header = 12
        if pos + header + length > end:
            raise DatasetEncodingError("File Meta Information element runs past the end of the part")
        values[number] = bytes(content[pos + header : pos + header + length])
        pos += header + length
    meta = FileMeta(_ui(values.get(0x0002, b"")), _ui(values.get(0x0003, b"")), _ui(values.get(0x0010, b"")))
    if not meta.transfer_syntax_uid:
        raise DatasetEncodingError("File Meta Information has no Transfer Syntax UID (0002,0010)")
    return meta, content[pos:]


@dataclass(frozen=True)
class PartOutcome:
    """What became of one part: stored (``failure is None``) or refused with a reason."""

    index: int
    sop_class_uid: str
    sop_instance_uid: str
    failure: int | None = None
    reason: str = ""


def _failure_reason(error: BaseException) -> int:
    if isinstance(error, TransferSyntaxNotSupportedError):
        return FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED
    if isinstance(error, StudyMismatchError):
        return FailureReason.STUDY_INSTANCE_UID_MISMATCH
    status = store_status_for(error)
    return int(status) if status is not StoreStatus.SUCCESS else int(FailureReason.PROCESSING_FAILURE)


def check_part_type(part: Part, default: MediaType) -> None:
    """PS3.18 §10.5.1.1: this server stores ``application/dicom`` parts only (415 otherwise)."""
    media = part.content_type(default)
    if media.type != DICOM_MEDIA_TYPE:
        raise MediaTypeError(f"part {part.index} is {media.type}; only {DICOM_MEDIA_TYPE} parts are stored")
    encoding = part.headers.get("content-transfer-encoding", "binary").lower()
    if encoding not in ("binary", "8bit", "7bit"):
        raise MediaTypeError(f"part {part.index}: Content-Transfer-Encoding {encoding[:20]} is not supported")


def store_part(ctx: StoreContext, part: Part, study_uid: str | None) -> PartOutcome:
    """Check, store and index one part; a refusal is returned (and recorded), never raised."""
    meta = FileMeta("", "", "")
    try:
        meta, raw = parse_part10(part.body)
        if meta.transfer_syntax_uid not in TRANSFER_SYNTAXES:
            raise TransferSyntaxNotSupportedError(
                f"transfer syntax {meta.transfer_syntax_uid[:64]} is not stored"
            )
        if study_uid is not None and read_header(raw, meta.transfer_syntax_uid).study_uid != study_uid:
            raise StudyMismatchError("the instance belongs to another study than the request URL's")
        store_instance(
            ctx,
            raw,
            sop_class_uid=meta.sop_class_uid,
            sop_instance_uid=meta.sop_instance_uid,
            transfer_syntax=meta.transfer_syntax_uid,
        )
    except Exception as exc:
        code, reason = _failure_reason(exc), f"part {part.index}: {safe_reason(exc)}"
        LOGGER.warning(
            "STOW-RS refused part %d sop_instance=%s (0x%04X): %s",
            part.index,
            meta.sop_instance_uid,
            code,
            reason,
        )
        record_refusal(ctx.session_factory, code, reason, meta.sop_class_uid, meta.sop_instance_uid)
        return PartOutcome(part.index, meta.sop_class_uid, meta.sop_instance_uid, code, reason)
    return PartOutcome(part.index, meta.sop_class_uid, meta.sop_instance_uid)


def record_refusal(
    factory: sessionmaker[Session],
    code: int,
    reason: str,
    sop_class_uid: str = "",
    sop_instance_uid: str = "",
) -> None:
    """A ``receive_failures`` row (DESIGN.md §4 rule 4); *code* is a Failure Reason or, for a
    request refused as a whole, its HTTP status."""
    try:
        with unit_of_work(factory) as session:
            record_failure(
                session,
                channel=CHANNEL,
                status_code=code,
                reason=reason,
                sop_class_uid=sop_class_uid[:64],
                sop_instance_uid=sop_instance_uid[:64],
            )
    except Exception as exc:  # the database may be what failed; the answer still goes out
        LOGGER.error("could not record a STOW-RS refusal: %s", safe_reason(exc))


@dataclass(frozen=True)
class StowResult:
    outcomes: list[PartOutcome]

    @property
    def stored(self) -> list[PartOutcome]:
        return [o for o in self.outcomes if o.failure is None]

    @property
    def failed(self) -> list[PartOutcome]:
        return [o for o in self.outcomes if o.failure is not None]

    @property
    def http_status(self) -> int:
        """PS3.18 Table 10.5.3-1: 200 all stored, 202 some, 409 none."""
        if not self.failed:
            return 200
        return 202 if self.stored else 409

    def response(self, base: str, study_uid: str | None, located: dict[str, tuple[str, str]]) -> JsonObject:
        """The Store Instances Response Module (PS3.18 Annex I) in the JSON model.

        *located* maps each stored SOP Instance UID to its (study, series) UIDs: the Retrieve
        URLs of the instances and, when they are all of one study, of the study (I.1).
        """
        body: dict[str, Any] = {}
        studies = {located[o.sop_instance_uid][0] for o in self.stored if o.sop_instance_uid in located}
        target = study_uid or (studies.pop() if len(studies) == 1 else None)
        if target:
            body["00081190"] = element("UR", [f"{base}/studies/{target}"])
        if self.failed:
            body["00081198"] = element("SQ", [_sop_item(o) for o in self.failed])
        if self.stored:
            items = []
            for outcome in self.stored:
                item = _sop_item(outcome)
                if outcome.sop_instance_uid in located:
                    study, series = located[outcome.sop_instance_uid]
                    url = f"{base}/studies/{study}/series/{series}/instances/{outcome.sop_instance_uid}"
                    item["00081190"] = element("UR", [url])
                items.append(item)
            body["00081199"] = element("SQ", items)
        return body


def _sop_item(outcome: PartOutcome) -> JsonObject:
    item: JsonObject = {
        "00081150": element("UI", [outcome.sop_class_uid]),
        "00081155": element("UI", [outcome.sop_instance_uid]),
    }
    if outcome.failure is not None:
        item["00081197"] = element("US", [outcome.failure])
    return item


def store_parts(ctx: StoreContext, parts: list[Part], study_uid: str | None) -> StowResult:
    """Store every part in order; each is acknowledged only once its file and row are durable."""
    return StowResult([store_part(ctx, part, study_uid) for part in parts])
