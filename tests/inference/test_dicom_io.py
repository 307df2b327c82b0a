"""load_image on real files from pydicom's test data and the pydicom-data package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels.processing import apply_modality_lut

from inference.dicom_io import ImageLoadError, apply_window, load_image


def datafile(name: str) -> str:
    path = get_testdata_file(name)
    if path is None:  # pragma: no cover - pydicom-data is a test dependency
        pytest.fail(f"pydicom test file {name} is missing (is pydicom-data installed?)")
    return str(path)


def assert_display_ready(pixels: np.ndarray) -> None:
    assert pixels.dtype == np.float32
    assert pixels.ndim == 2
    assert np.isfinite(pixels).all()
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    assert pixels.max() - pixels.min() > 0.2, "a real image should use a good part of the range"


Rg1 = tuple[pydicom.Dataset, np.ndarray]


@pytest.fixture(scope="module")
def rg1_uncompressed() -> Rg1:
    path = datafile("RG1_UNCR.dcm")
    return pydicom.dcmread(path), load_image(path).pixels


def test_real_chest_radiograph_uncompressed_and_jpeg2000_agree(rg1_uncompressed: Rg1) -> None:
    ds, uncompressed = rg1_uncompressed
    j2k = load_image(datafile("RG1_J2KR.dcm"))
    assert pydicom.dcmread(
        datafile("RG1_J2KR.dcm"), stop_before_pixels=True
    ).file_meta.TransferSyntaxUID.is_compressed
    assert_display_ready(j2k.pixels)
    assert j2k.pixels.shape == uncompressed.shape == (ds.Rows, ds.Columns)
    # lossless JPEG 2000: the same image (allow float noise only)
    assert np.abs(j2k.pixels - uncompressed).max() < 1e-5
    assert (j2k.modality, j2k.body_part, j2k.view_position) == ("CR", "CHEST", "PA")


def test_monochrome1_is_inverted(rg1_uncompressed: Rg1) -> None:
    ds, pixels = rg1_uncompressed
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    raw = ds.pixel_array.astype(np.float64)
    # higher stored value = darker for MONOCHROME1; after loading, higher = brighter
    assert np.corrcoef(raw.ravel()[::97], pixels.ravel()[::97])[0, 1] < -0.95
    # and exactly 1 - the LINEAR window of PS3.3 C.11.2.1.2.1 (centre 15000, width 30000)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = 1.0 - np.clip((raw - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(pixels, expected, atol=1e-5)


def test_chest_radiograph_spacing_of_zero_is_no_spacing() -> None:
    assert load_image(datafile("RG1_UNCR.dcm")).pixel_spacing is None  # the file says 0.000\0.000


def test_ct_gets_the_modality_lut_and_min_max_without_a_window() -> None:
    path = datafile("CT_small.dcm")
    ds = pydicom.dcmread(path)
    image = load_image(path)
    assert "WindowCenter" not in ds
    assert_display_ready(image.pixels)
    assert image.pixels.min() == 0.0 and image.pixels.max() == 1.0
    hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    expected = (hu - hu.min()) / (hu.max() - hu.min())
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)
    assert image.modality == "CT"
    assert image.pixel_spacing == pytest.approx((0.661468, 0.661468))
    assert image.sop_instance_uid == ds.SOPInstanceUID


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_bigendian.dcm",
    ],
)
def test_lossless_encodings_give_the_same_image(name: str) -> None:
    reference = load_image(datafile("MR_small.dcm")).pixels
    other = load_image(datafile(name)).pixels
    assert_display_ready(other)
    np.testing.assert_array_equal(other, reference)


def test_window_of_the_file_is_used() -> None:
    path = datafile("MR_small.dcm")
    ds = pydicom.dcmread(path)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    raw = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    expected = np.clip((raw - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(load_image(path).pixels, expected, atol=1e-6)


def test_multi_frame_gives_the_first_frame() -> None:
    path = datafile("emri_small_RLE.dcm")
    ds = pydicom.dcmread(path)
    assert int(ds.NumberOfFrames) == 10
    frames = ds.pixel_array.astype(np.float64)
    first = frames[0]
    image = load_image(path)
    assert image.pixels.shape == first.shape
    np.testing.assert_allclose(image.pixels, (first - first.min()) / (first.max() - first.min()), atol=1e-6)
    assert not np.allclose(frames[0], frames[5])


def test_jpeg_lossless_decodes() -> None:
    image = load_image(datafile("JPEG-LL.dcm"))
    assert_display_ready(image.pixels)
    assert image.pixels.shape == (1024, 256)


@pytest.mark.parametrize("name", ["SC_rgb.dcm", "SC_rgb_rle.dcm", "US1_J2KR.dcm", "examples_palette.dcm"])
def test_colour_becomes_luminance(name: str) -> None:
    path = datafile(name)
    ds = pydicom.dcmread(path)
    image = load_image(path)
    assert image.pixels.shape == (ds.Rows, ds.Columns)
    assert image.pixels.min() >= 0.0 and image.pixels.max() <= 1.0


def test_rgb_luminance_values() -> None:
    rgb = pydicom.dcmread(datafile("SC_rgb.dcm")).pixel_array.astype(np.float64)
    expected = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0
    np.testing.assert_allclose(load_image(datafile("SC_rgb.dcm")).pixels, expected, atol=1e-6)
    np.testing.assert_allclose(load_image(datafile("SC_rgb_rle.dcm")).pixels, expected, atol=1e-6)


def test_truncated_pixel_data_is_a_typed_error() -> None:
    path = datafile("MR_truncated.dcm")
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert info.value.path == path
    assert "decoded" in info.value.reason


def test_not_dicom_is_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "note.dcm"
    path.write_text("this is not a DICOM file\n" * 20)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_missing_file_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError):
        load_image(tmp_path / "absent.dcm")


def test_no_pixel_data_is_a_typed_error(tmp_path: Path) -> None:
    ds = pydicom.dcmread(datafile("CT_small.dcm"))
    del ds.PixelData
    path = tmp_path / "no_pixels.dcm"
    ds.save_as(path)
    with pytest.raises(ImageLoadError, match="no pixel data"):
        load_image(path)


def test_corrupt_compressed_pixel_data_is_a_typed_error(tmp_path: Path) -> None:
    ds = pydicom.dcmread(datafile("MR_small_jp2klossless.dcm"))
    data = bytearray(ds.PixelData)
    # keep the encapsulation (basic offset table + item header) and wreck the codestream
    data[24:] = bytes(len(data) - 24)
    ds.PixelData = bytes(data)
    path = tmp_path / "broken_j2k.dcm"
    ds.save_as(path)
    with pytest.raises(ImageLoadError, match="cannot be decoded"):
        load_image(path)


def test_apply_window_follows_ps3_3() -> None:
    x = np.array([0.0, 99.5, 100.0, 150.0, 200.0, 1000.0])
    linear = apply_window(x, center=100.0, width=101.0)
    assert linear[0] == 0.0 and linear[-1] == 1.0
    assert linear[2] == pytest.approx(0.505, abs=1e-3)
    assert apply_window(x, 100.0, 100.0, "LINEAR_EXACT")[2] == pytest.approx(0.5)
    assert apply_window(x, 100.0, 100.0, "SIGMOID")[2] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        apply_window(x, 100.0, 0.5)
    with pytest.raises(ValueError):
        apply_window(x, 100.0, 10.0, "CUBIC")
