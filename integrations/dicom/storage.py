"""Durable DICOM Part 10 files: ``<dicom_dir>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``.

A received data set is written exactly as it came off the wire behind a preamble and File Meta
Information (PS3.10 §7.1); pixel data are never decoded or re-encoded. The write is durable before
it returns (DESIGN.md §4 rule 1): temporary file in the target folder, write, fsync, atomic rename,
fsync of the folder. A crash leaves either the old file, the new file, or a hidden ``.part`` file,
never a half-written ``.dcm``.
"""

from __future__ import annotations

import os
import re
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clinic.settings import Settings
from integrations.dicom.errors import InvalidUIDError, MissingAttributeError

#: Our Implementation Class UID (PS3.7 D.3.3.2), a UUID-derived UID (PS3.5 B.2).
IMPLEMENTATION_CLASS_UID = "2.25.280333080728260989335764785186500689156"
IMPLEMENTATION_VERSION_NAME = "SMARTCLINIC_01"

_UID_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*\Z")
_PREAMBLE = b"\x00" * 128 + b"DICM"
_FILE_MODE = 0o644
_OPEN_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
)


def validate_uid(value: str, keyword: str) -> str:
    """Return *value* if it is a UID per PS3.5 §9.1 (digits and dots, at most 64 characters).

    Leading zeros in a component are tolerated (many devices send them); what matters here is
    that the UID is safe as a file-name part: no separators, no ``..``, bounded length.
    """
    if not value:
        raise MissingAttributeError(keyword)
    if len(value) > 64:
        raise InvalidUIDError(keyword, f"{len(value)} characters, more than 64")
    if not _UID_RE.match(value):
        raise InvalidUIDError(keyword, "characters other than digits and single dots")
    return value


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sHL", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _ui(value: str) -> bytes:
    data = value.encode("ascii")
    return data + b"\x00" if len(data) % 2 else data


def _text(value: str) -> bytes:
    data = value.encode("ascii", "replace")
    return data + b" " if len(data) % 2 else data


def encode_file_meta(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    source_ae_title: str = "",
) -> bytes:
    """Preamble, ``DICM`` prefix and File Meta Information group (PS3.10 §7.1), explicit VR LE.

    Hand-encoded: it is the same seven elements for every instance, and building it through
    pydicom costs more than the rest of the write.
    """
    source = source_ae_title.strip()
    body = b"".join(
        (
            _element(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, 0x0002, b"UI", _ui(sop_class_uid)),
            _element(0x0002, 0x0003, b"UI", _ui(sop_instance_uid)),
            _element(0x0002, 0x0010, b"UI", _ui(transfer_syntax_uid)),
            _element(0x0002, 0x0012, b"UI", _ui(IMPLEMENTATION_CLASS_UID)),
            _element(0x0002, 0x0013, b"SH", _text(IMPLEMENTATION_VERSION_NAME)),
            _element(0x0002, 0x0016, b"AE", _text(source)) if source else b"",
        )
    )
    group_length = _element(0x0002, 0x0000, b"UL", struct.pack("<L", len(body)))
    return _PREAMBLE + group_length + body


@dataclass(frozen=True)
class StoredFile:
    """A Part 10 file made durable by :meth:`InstanceStore.write`."""

    path: Path
    #: POSIX path relative to the data dir, as recorded in the database.
    relative_path: str
    size: int
    #: True when an earlier copy of the same SOP instance was replaced.
    replaced: bool


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, chunks: Sequence[bytes | memoryview]) -> int:
    views = [memoryview(c).cast("B") for c in chunks]
    total = sum(len(v) for v in views)
    written = 0
    while views:
        n = os.writev(fd, views)
        written += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]
    assert written == total
    return total


class InstanceStore:
    """Durable instance files under one root folder, indexed by UIDs."""

    def __init__(self, root: Path, data_dir: Path) -> None:
        self.root = root
        self.data_dir = data_dir
        try:
            self._prefix = root.relative_to(data_dir).as_posix()
        except ValueError:  # a root outside the data dir is recorded by its absolute path
            self._prefix = root.as_posix()
        self._counter = 0
        self._lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> InstanceStore:
        return cls(settings.dicom_dir, settings.resolved_data_dir)

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        return (
            self.root
            / validate_uid(study_uid, "StudyInstanceUID")
            / validate_uid(series_uid, "SeriesInstanceUID")
            / f"{validate_uid(sop_instance_uid, 'SOPInstanceUID')}.dcm"
        )

    def relative_path(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
        """The path recorded in the database for this instance (POSIX, relative to the data dir)."""
        return f"{self._prefix}/{study_uid}/{series_uid}/{sop_instance_uid}.dcm"

    def _ensure_dir(self, study_dir: Path, series_dir: Path) -> None:
        """Create the study and series folders; a new folder's entry is made durable too."""
        try:
            os.mkdir(series_dir)
        except FileExistsError:
            return
        except FileNotFoundError:
            try:
                os.mkdir(study_dir)
                _fsync_dir(self.root)
            except FileExistsError:
                pass
            try:
                os.mkdir(series_dir)
            except FileExistsError:
                return
        _fsync_dir(study_dir)

    def _temp_name(self, final: Path) -> Path:
        with self._lock:
            self._counter += 1
            counter = self._counter
        return final.with_name(f".{final.stem}.{os.getpid()}.{counter}.part")

    def write(
        self,
        study_uid: str,
        series_uid: str,
        sop_instance_uid: str,
        chunks: Sequence[bytes | memoryview],
    ) -> StoredFile:
        """Write *chunks* (file meta, then the data set as received) durably; return the file."""
        final = self.path_for(study_uid, series_uid, sop_instance_uid)
        series_dir = final.parent
        self._ensure_dir(series_dir.parent, series_dir)
        temp = self._temp_name(final)
        fd = os.open(temp, _OPEN_FLAGS, _FILE_MODE)
        try:
            try:
                size = _write_all(fd, chunks)
                os.fsync(fd)
            finally:
                os.close(fd)
            replaced = os.path.lexists(final)
            os.replace(temp, final)
        except BaseException:
            _unlink_quietly(temp)
            raise
        _fsync_dir(series_dir)
        relative = self.relative_path(study_uid, series_uid, sop_instance_uid)
        return StoredFile(path=final, relative_path=relative, size=size, replaced=replaced)

    def discard(self, stored: StoredFile) -> None:
        """Undo :meth:`write` after a later step failed.

        A file that replaced an earlier copy of the same instance stays: the earlier row points
        at it, and it holds the same SOP instance.
        """
        if stored.replaced:
            return
        _unlink_quietly(stored.path)
        try:
            _fsync_dir(stored.path.parent)
        except OSError:
            pass


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
