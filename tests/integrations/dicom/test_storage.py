"""Durable Part 10 files: layout, bytes as received, atomic replace, nothing left on failure."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pydicom
import pytest
from pydicom import config as pydicom_config

from integrations.dicom.errors import InvalidUIDError, MissingAttributeError
from integrations.dicom.storage import (
    IMPLEMENTATION_CLASS_UID,
    InstanceStore,
    encode_file_meta,
    validate_uid,
)

from .helpers import dataset_bytes, file_meta, pydicom_file

STUDY, SERIES, SOP = "1.2.3.4", "1.2.3.4.5", "1.2.3.4.5.6"


@pytest.fixture
def store(tmp_path: Path) -> InstanceStore:
    return InstanceStore(tmp_path / "var" / "dicom", tmp_path / "var")


@pytest.mark.parametrize("uid", ["1.2.840.10008.5.1.4.1.1.2", "2.25.123", "1.2.03.4", "9" * 64])
def test_valid_uids(uid: str) -> None:
    assert validate_uid(uid, "X") == uid


@pytest.mark.parametrize(
    "uid",
    [
        "1.2/../3",
        "..",
        "1..2",
        ".1.2",
        "1.2.",
        "1.2.3 ",
        "1.2\x003",
        "1.2.a",
        "/etc/passwd",
        "1" * 65,
        "1.2\\3",
    ],
)
def test_unsafe_uids_are_refused(uid: str) -> None:
    with pytest.raises(InvalidUIDError):
        validate_uid(uid, "StudyInstanceUID")


def test_empty_uid_is_missing() -> None:
    with pytest.raises(MissingAttributeError):
        validate_uid("", "StudyInstanceUID")


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm", "RG1_J2KR.dcm", "image_dfl.dcm"])
def test_written_file_reads_back_strictly_with_the_bytes_as_received(
    name: str, store: InstanceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = pydicom_file(name)
    meta = file_meta(source)
    raw = dataset_bytes(source)
    prefix = encode_file_meta(
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID, "MODALITY1"
    )
    stored = store.write(STUDY, SERIES, SOP, (prefix, memoryview(raw)))
    assert stored.path == store.root / STUDY / SERIES / f"{SOP}.dcm"
    assert stored.relative_path == f"dicom/{STUDY}/{SERIES}/{SOP}.dcm"
    assert stored.size == stored.path.stat().st_size == len(prefix) + len(raw)
    assert not stored.replaced
    assert dataset_bytes(stored.path) == raw
    monkeypatch.setattr(pydicom_config.settings, "reading_validation_mode", pydicom_config.RAISE)
    ds = pydicom.dcmread(stored.path)
    assert ds.file_meta.TransferSyntaxUID == meta.TransferSyntaxUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == meta.MediaStorageSOPInstanceUID
    assert ds.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert ds.file_meta.SourceApplicationEntityTitle == "MODALITY1"
    assert ds.SOPInstanceUID == pydicom.dcmread(source).SOPInstanceUID
    assert [p.name for p in stored.path.parent.iterdir()] == [stored.path.name]


def test_rewrite_replaces_and_discard_keeps_a_replaced_file(store: InstanceStore) -> None:
    first = store.write(STUDY, SERIES, SOP, (b"one",))
    second = store.write(STUDY, SERIES, SOP, (b"two",))
    assert not first.replaced and second.replaced
    assert second.path.read_bytes() == b"two"
    store.discard(second)  # an earlier row points at this file: it stays
    assert second.path.exists()
    other = store.write(STUDY, SERIES, "1.2.3.4.5.7", (b"new",))
    store.discard(other)
    assert not other.path.exists()


@pytest.mark.parametrize("failing", ["fsync", "writev", "replace"])
def test_failed_write_leaves_nothing(
    failing: str, store: InstanceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up at any step: the error goes up, no temporary or final file stays."""

    def no_space(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, failing, no_space)
    with pytest.raises(OSError) as raised:
        store.write(STUDY, SERIES, SOP, (b"x" * 1000,))
    assert raised.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert [p for p in store.root.rglob("*") if p.is_file()] == []


def test_invalid_uid_never_touches_the_disk(store: InstanceStore) -> None:
    with pytest.raises(InvalidUIDError):
        store.write("1.2/../../x", SERIES, SOP, (b"x",))
    assert list(store.root.iterdir()) == []


def test_file_meta_of_odd_and_even_uids(tmp_path: Path) -> None:
    for uid in ("1.2.3", "1.2.34"):
        prefix = encode_file_meta("1.2.840.10008.5.1.4.1.1.2", uid, "1.2.840.10008.1.2.1", "AE")
        assert len(prefix) % 2 == 0
        path = tmp_path / f"{uid}.dcm"
        path.write_bytes(prefix)
        meta = file_meta(path)
        assert meta.MediaStorageSOPInstanceUID == uid
        assert meta.FileMetaInformationGroupLength == len(prefix) - 132 - 12


def test_store_folder_is_created(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "dicom"
    InstanceStore(root, tmp_path)
    assert root.is_dir()
    assert os.access(root, os.W_OK)
