"""Helpers of the result-object tests: source series, AI reads in memory, strict read-back and the
reference validators (dicom3tools' ``dciodvfy``, dcmtk's ``dsrdump``)."""

from __future__ import annotations

import copy
import datetime as dt
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from pydicom import config, dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from clinic.ai.models import SYNTHETIC_DISCLAIMER, AIFinding, AIMeasurement, AIRead
from integrations.dicom.results import encode
from integrations.dicom.synthetic import build_cxr_dataset
from tests.integrations.dicom.helpers import pydicom_file

CREATED = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)

#: (code, label, probability, threshold) of a chest radiograph read.
Finding = tuple[str, str, float, float]
#: (finding_code, code, label, value, unit) of a measurement.
Number = tuple[str, str, str, float, str]


def ct_series(count: int = 10, *, spacing: float = 5.0) -> list[Dataset]:
    """*count* CT slices made from pydicom's CT_small.dcm (128 x 128): one new study, series and
    frame of reference, new SOP Instance UIDs, slices *spacing* mm apart along z."""
    base = dcmread(pydicom_file("CT_small.dcm"))
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    x, y, z = (float(v) for v in base.ImagePositionPatient)
    slices: list[Dataset] = []
    for k in range(count):
        ds = copy.deepcopy(base)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [x, y, z + spacing * k]
        ds.SliceLocation = z + spacing * k
        slices.append(ds)
    return slices


def synthetic_cr(seed: int = 0, size: int = 256) -> Dataset:
    """A synthetic Computed Radiography chest image (integrations.dicom.synthetic)."""
    pixels = np.random.default_rng(seed).integers(0, 4096, (size, size), dtype=np.uint16)
    return build_cxr_dataset(
        pixels, patient_id=f"P{seed}", patient_name="TEST^RESULTS", modality="CR", accession_number="ACC1"
    )


def real_cr() -> Dataset:
    """The real chest radiograph of pydicom-data (RG1_UNCR.dcm: CR, 1955 x 1841, ISO_IR 100)."""
    return dcmread(pydicom_file("RG1_UNCR.dcm"))


def make_read(
    source: Dataset,
    findings: Sequence[Finding],
    measurements: Sequence[Number] = (),
    *,
    model_id: str = "demo-cxr",
    model_name: str = "CXR DenseNet121 demo (consolidation, nodule/mass)",
    model_version: str = "0.3.1",
    synthetic: bool = True,
    created_at: dt.datetime = CREATED,
) -> AIRead:
    """An AIRead in memory (no database) of *source*, as clinic.ai.service records one."""
    read = AIRead(
        model_id=model_id,
        model_name=model_name,
        model_version=model_version,
        is_synthetic=synthetic,
        disclaimer=SYNTHETIC_DISCLAIMER if synthetic else "",
        sop_instance_uid=str(source.SOPInstanceUID),
        series_uid=str(source.SeriesInstanceUID),
        device="cpu",
        created_at=created_at,
    )
    read.findings = [
        AIFinding(
            code=c, label=label, probability=p, threshold=t, positive=p >= t, urgency=1 if p >= t else 0
        )
        for c, label, p, t in findings
    ]
    read.measurements = [
        AIMeasurement(finding_code=f, code=c, label=label, value=v, unit=u)
        for f, c, label, v, u in measurements
    ]
    return read


def write_strict(ds: Dataset, folder: Path, name: str) -> tuple[Path, Dataset]:
    """*ds* encoded as a Part 10 file, written, and read back with pydicom raising on any value
    that breaks its VR (``reading_validation_mode = RAISE``), every element decoded."""
    path = folder / name
    path.write_bytes(encode(ds))
    with config.strict_reading():
        back = dcmread(path)
        for _ in back.iterall():  # elements decode lazily: touch every one under RAISE
            pass
    return path, back


def dciodvfy_errors(path: Path) -> tuple[list[str], str]:
    """The ``Error`` lines of dicom3tools' IOD validator on *path*, and its whole output."""
    tool = shutil.which("dciodvfy")
    if tool is None:  # pragma: no cover - dicom3tools is installed where we test
        pytest.skip("dicom3tools' dciodvfy is not installed")
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    return [line for line in output.splitlines() if line.startswith("Error")], output


def dsrdump(path: Path) -> str:
    """dcmtk's rendering of the SR tree of *path* (long values in full, all codes)."""
    tool = shutil.which("dsrdump")
    if tool is None:  # pragma: no cover - dcmtk is installed where we test
        pytest.skip("dcmtk's dsrdump is not installed")
    result = subprocess.run([tool, "+Pl", "+Pc", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def code_of(item: Dataset) -> tuple[str, str]:
    """(value, scheme) of the first item of a Code Sequence, whatever its value attribute."""
    value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue")
    return str(value), str(item.CodingSchemeDesignator)
