"""Helpers of the DICOM tests: real dcmtk tools, raw sends with pynetdicom, looks at disk and DB."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, build_context
from pynetdicom.dsutils import split_dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clinic.db import unit_of_work
from clinic.imaging.models import Instance, ReceiveFailure
from clinic.settings import Settings
from integrations.dicom.synthetic import build_cxr_dataset, write_dataset

CALLED_AE = "CLINIC"


def pydicom_file(name: str) -> Path:
    """A file of pydicom's test data or the pydicom-data package (never downloaded)."""
    path = get_testdata_file(name, download=False)
    if path is None:  # pragma: no cover - pydicom-data is a test dependency
        pytest.fail(f"pydicom test file {name} is missing (is pydicom-data installed?)")
    return Path(path)


def require_dcmtk(tool: str = "storescu") -> str:
    path = shutil.which(tool)
    if path is None:  # pragma: no cover - dcmtk is installed on the machines we test on
        pytest.skip(f"dcmtk's {tool} is not installed")
    return path


def storescu(
    port: int, *paths: Path, options: Sequence[str] = (), timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run dcmtk's storescu (one association for all *paths*); ``-v`` to see the responses."""
    tool = require_dcmtk("storescu")
    return subprocess.run(
        [
            tool,
            "-v",
            *options,
            "-aet",
            "STORESCU",
            "-aec",
            CALLED_AE,
            "127.0.0.1",
            str(port),
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def store_responses(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The ``Received Store Response (...)`` lines of a verbose storescu run."""
    return [
        line for line in (result.stdout + result.stderr).splitlines() if "Received Store Response" in line
    ]


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a Part 10 file, after its File Meta Information."""
    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def file_meta(path: Path) -> Dataset:
    return split_dataset(path)[0]


def stored_files(settings: Settings) -> list[Path]:
    return sorted(p for p in settings.dicom_dir.rglob("*") if p.is_file() and p.suffix == ".dcm")


def partial_files(settings: Settings) -> list[Path]:
    """Anything in the DICOM folder that is not a stored instance (temporary or stray files)."""
    return sorted(p for p in settings.dicom_dir.rglob("*") if p.is_file() and not p.name.endswith(".dcm"))


def instances(factory: sessionmaker[Session]) -> list[Instance]:
    with unit_of_work(factory) as session:
        return list(session.scalars(select(Instance).order_by(Instance.id)))


def failures(factory: sessionmaker[Session]) -> list[ReceiveFailure]:
    with unit_of_work(factory) as session:
        return list(session.scalars(select(ReceiveFailure).order_by(ReceiveFailure.id)))


def synthetic_file(folder: Path, name: str, *, seed: int = 0, size: int = 128, **kwargs: object) -> Path:
    """A synthetic chest radiograph written as a Part 10 file."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 4096, (size, size), dtype=np.uint16)
    options: dict[str, object] = {"patient_id": f"P{seed}", "patient_name": f"TEST^PATIENT{seed}", **kwargs}
    ds = build_cxr_dataset(pixels, **options)  # type: ignore[arg-type]
    return write_dataset(ds, folder / name)


def send_raw(port: int, path: Path, monkeypatch: pytest.MonkeyPatch) -> Dataset:
    """C-STORE the encoded data set of *path* byte for byte, as its File Meta describes it.

    pynetdicom's chunked send reads the bytes after the File Meta Information and sends them
    without decoding, which lets a test send truncated or inconsistent data sets.
    """
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    meta = file_meta(path)
    ae = AE(ae_title="RAWSCU")
    ae.requested_contexts = [build_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])]
    assoc = ae.associate("127.0.0.1", port, ae_title=CALLED_AE)
    assert assoc.is_established, "association with the SCP failed"
    try:
        return assoc.send_c_store(path)
    finally:
        if assoc.is_established:
            assoc.release()
