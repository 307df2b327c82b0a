"""CT series → volume: build_ct_series writes it, load_volume reads it back in position order and
refuses series that are not one regular grid."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from inference.dicom_io import ImageLoadError, InconsistentSeriesError, load_volume
from integrations.dicom.synthetic import build_ct_series, write_dataset

SPACING = (2.5, 0.8, 0.75)


def _volume(n: int = 10, rows: int = 40, cols: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1024, 1500, (n, rows, cols)).astype(np.float32)


def _write(datasets: list[Dataset], folder: Path, shuffle: int | None = 7) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [write_dataset(ds, folder / f"{generate_uid()}.dcm") for ds in datasets]
    if shuffle is not None:
        random.Random(shuffle).shuffle(paths)
    return paths


def _series(volume: np.ndarray, **options: object) -> list[Dataset]:
    return build_ct_series(volume, SPACING, patient_id="CT-1", patient_name="PHANTOM^CT", **options)  # type: ignore[arg-type]


def test_round_trip_orders_slices_by_position_not_by_file_or_number(tmp_path: Path) -> None:
    volume = _volume()
    datasets = _series(volume, origin=(-20.0, -15.0, -100.0))
    paths = _write(datasets, tmp_path / "s")
    loaded = load_volume(paths)
    assert np.array_equal(loaded.hu, volume)  # Rescale Intercept -1024 applied, whole HU kept
    assert loaded.hu.dtype == np.float32
    assert loaded.spacing == pytest.approx(SPACING)
    assert loaded.sop_instance_uids == tuple(ds.SOPInstanceUID for ds in datasets)  # inferior first
    assert [ds.InstanceNumber for ds in datasets][:2] == [10, 9]  # numbered head first: not the order
    assert loaded.series_uid == datasets[0].SeriesInstanceUID
    assert (loaded.modality, loaded.body_part) == ("CT", "CHEST")
    assert loaded.origin == pytest.approx((-20.0, -15.0, -100.0))
    assert loaded.direction == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_rescale_slope_and_intercept_are_applied_per_slice(tmp_path: Path) -> None:
    volume = _volume(n=4)
    datasets = _series(volume)
    ds = datasets[2]  # re-encode one slice with another slope/intercept, same HU
    stored = np.rint((volume[2] + 2048.0) / 2.0).astype(np.uint16)
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-2048"
    ds.PixelData = stored.tobytes()
    loaded = load_volume(_write(datasets, tmp_path / "s"))
    assert np.allclose(loaded.hu[2], stored * 2.0 - 2048.0)
    assert np.array_equal(loaded.hu[[0, 1, 3]], volume[[0, 1, 3]])


def test_written_slices_are_valid_ct_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pydicom_config.settings, "reading_validation_mode", pydicom_config.RAISE)
    datasets = _series(_volume(n=3), accession_number="ACC-CT")
    paths = _write(datasets, tmp_path / "s", shuffle=None)
    back = pydicom.dcmread(paths[0])
    for element in back.iterall():
        _ = element.value
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    assert (back.Modality, back.BodyPartExamined, back.RescaleType) == ("CT", "CHEST", "HU")
    assert (
        float(back.RescaleIntercept) == -1024 and back.FrameOfReferenceUID == datasets[1].FrameOfReferenceUID
    )
    tool = shutil.which("dciodvfy")
    if tool is None:  # pragma: no cover - dicom3tools is installed where the project is tested
        pytest.skip("dicom3tools' dciodvfy is not installed")
    out = subprocess.run([tool, str(paths[0])], capture_output=True, text=True, timeout=60)
    errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
    assert errors == [], out.stdout + out.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("size", "mixed sizes"),
        ("orientation", "mixed orientations"),
        ("duplicate", "duplicate slice"),
        ("gap", "uneven slice steps"),
        ("series", "another series"),
        ("no_position", "ImagePositionPatient is missing"),
        ("tilt", "gantry tilt"),
        ("spacing", "Pixel Spacing"),
    ],
)
def test_inconsistent_series_are_refused(tmp_path: Path, change: str, message: str) -> None:
    volume = _volume(n=6)
    datasets = _series(volume)
    ds = datasets[3]
    if change == "size":
        datasets[3] = _series(_volume(n=1, rows=32), series_uid=datasets[0].SeriesInstanceUID)[0]
    elif change == "orientation":
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    elif change == "duplicate":
        ds.ImagePositionPatient = datasets[2].ImagePositionPatient
    elif change == "gap":
        del datasets[3]
    elif change == "series":
        ds.SeriesInstanceUID = generate_uid()
    elif change == "no_position":
        del ds.ImagePositionPatient
    elif change == "tilt":
        for k, d in enumerate(datasets):  # each slice shifted along y: a tilted gantry
            d.ImagePositionPatient = [d.ImagePositionPatient[0], k * 1.5, d.ImagePositionPatient[2]]
    elif change == "spacing":
        ds.PixelSpacing = [0.5, 0.5]
    with pytest.raises(InconsistentSeriesError, match=message) as info:
        load_volume(_write(datasets, tmp_path / "s"))
    assert isinstance(info.value, ImageLoadError)  # permanent for the worker, like any load error


def test_unreadable_files_and_an_empty_list(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not DICOM")
    with pytest.raises(ImageLoadError, match="not a readable DICOM file"):
        load_volume([bad])
    with pytest.raises(InconsistentSeriesError, match="no instances"):
        load_volume([])


def test_a_single_slice_takes_its_thickness(tmp_path: Path) -> None:
    loaded = load_volume(_write(_series(_volume(n=1)), tmp_path / "s"))
    assert loaded.hu.shape == (1, 40, 48) and loaded.spacing == pytest.approx(SPACING)
