"""Synthetic chest radiographs: valid objects that read back with pydicom in strict mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.uid import ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation

from integrations.dicom.header import read_header
from integrations.dicom.synthetic import SYNTHETIC_NOTE, build_cxr_dataset, write_dataset

from .helpers import dataset_bytes


@pytest.fixture
def strict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pydicom_config.settings, "reading_validation_mode", pydicom_config.RAISE)


def _pixels(shape: tuple[int, int] = (200, 160), high: int = 4095) -> np.ndarray:
    return np.random.default_rng(3).integers(0, high + 1, shape, dtype=np.uint16)


@pytest.mark.parametrize(
    ("modality", "sop_class"),
    [("DX", DigitalXRayImageStorageForPresentation), ("CR", ComputedRadiographyImageStorage)],
)
def test_round_trip_in_strict_mode(modality: str, sop_class: str, tmp_path: Path, strict: None) -> None:
    pixels = _pixels()
    ds = build_cxr_dataset(
        pixels,
        patient_id="KR-0001",
        patient_name="홍^길동",
        accession_number="ACC1",
        modality=modality,  # type: ignore[arg-type]
    )
    path = write_dataset(ds, tmp_path / "cxr.dcm")
    back = pydicom.dcmread(path)
    for element in back.iterall():  # every value converts under RAISE
        _ = element.value
    assert back.SOPClassUID == sop_class
    assert back.file_meta.MediaStorageSOPClassUID == sop_class
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    assert (back.Modality, back.BodyPartExamined, back.ViewPosition) == (modality, "CHEST", "PA")
    assert back.PhotometricInterpretation == "MONOCHROME2"
    assert str(back.PatientName) == "홍^길동" and back.PatientID == "KR-0001"
    assert back.AccessionNumber == "ACC1"
    assert (back.Rows, back.Columns, back.BitsStored, back.HighBit) == (200, 160, 12, 11)
    assert np.array_equal(back.pixel_array, pixels)
    assert float(back.WindowWidth) > 0 and 0 < float(back.WindowCenter) < 4096
    assert float(back.PixelSpacing[0]) == pytest.approx(350.0 / 200, rel=1e-5)
    assert back.ImageComments == SYNTHETIC_NOTE
    for uid in (back.StudyInstanceUID, back.SeriesInstanceUID, back.SOPInstanceUID):
        assert uid.is_valid
    header = read_header(dataset_bytes(path), back.file_meta.TransferSyntaxUID)
    assert header.patient_name == "홍^길동" and header.has_pixel_data
    assert [p.name for p in tmp_path.iterdir()] == ["cxr.dcm"]


def test_given_uids_and_options_are_kept(strict: None) -> None:
    ds = build_cxr_dataset(
        _pixels((64, 64), 255),
        patient_id="P",
        patient_name="A^B",
        study_uid="1.2.3",
        series_uid="1.2.3.4",
        sop_instance_uid="1.2.3.4.5",
        view_position="ap",
        pixel_spacing=(0.2, 0.25),
        series_number=3,
        instance_number=7,
    )
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == ("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert ds.ViewPosition == "AP" and ds.BitsStored == 8
    assert [float(v) for v in ds.PixelSpacing] == [0.2, 0.25]
    assert (ds.SeriesNumber, ds.InstanceNumber) == (3, 7)


def test_generated_uids_differ() -> None:
    a = build_cxr_dataset(_pixels((32, 32)), patient_id="P", patient_name="A")
    b = build_cxr_dataset(_pixels((32, 32)), patient_id="P", patient_name="A")
    assert a.StudyInstanceUID != b.StudyInstanceUID and a.SOPInstanceUID != b.SOPInstanceUID


@pytest.mark.parametrize(
    ("pixels", "options", "message"),
    [
        (np.zeros((4, 4, 3), np.uint16), {}, "2-D"),
        (np.zeros((4, 4), np.float32), {}, "uint16"),
        (np.zeros((4, 4), np.uint16), {"view_position": "OBLIQUE"}, "view_position"),
        (np.zeros((4, 4), np.uint16), {"modality": "CT"}, "modality"),
        (np.full((4, 4), 5000, np.uint16), {"bits_stored": 12}, "bits_stored"),
    ],
)
def test_bad_input_is_refused(pixels: np.ndarray, options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_cxr_dataset(pixels, patient_id="P", patient_name="A", **options)  # type: ignore[arg-type]
