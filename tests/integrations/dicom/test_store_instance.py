"""store_instance without the network."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from clinic.settings import Settings
from integrations.dicom.errors import UnsupportedSOPClassError
from integrations.dicom.scp import StoreContext, store_instance
from integrations.dicom.storage import InstanceStore

from .helpers import dataset_bytes, file_meta, pydicom_file, stored_files


def _args(path: Path) -> dict[str, str]:
    meta = file_meta(path)
    return {
        "sop_class_uid": str(meta.MediaStorageSOPClassUID),
        "sop_instance_uid": str(meta.MediaStorageSOPInstanceUID),
        "transfer_syntax": str(meta.TransferSyntaxUID),
        "calling_ae": "UNIT",
    }


def test_an_unsupported_sop_class_is_refused_before_any_write(
    scp_settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    path = pydicom_file("rtplan.dcm")
    ctx = StoreContext(store=InstanceStore.from_settings(scp_settings), session_factory=session_factory)
    with pytest.raises(UnsupportedSOPClassError):
        store_instance(ctx, dataset_bytes(path), **_args(path))
    assert stored_files(scp_settings) == []
