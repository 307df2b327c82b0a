"""The rendering pipeline against pydicom's own LUT functions, on real (and compressed) test files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_windowing

from clinic.imaging.render import (
    COLORMAP,
    ImageFormat,
    Window,
    apply_window,
    colorize_heatmap,
    render_heatmap,
    render_instance,
)


def data_file(name: str) -> Path:
    path = get_testdata_file(name)
    assert path, name
    return Path(path)


def decode(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)))


def expected_window(ds: Dataset, frame: np.ndarray, window: Window) -> np.ndarray:
    """pydicom's VOI windowing (PS3.3 C.11.2.1.2), scaled from its output range to 0..255."""
    ds = ds.copy()
    ds.WindowCenter, ds.WindowWidth = window.center, window.width
    values = apply_modality_lut(frame, ds)
    out = apply_windowing(values, ds)
    if "RescaleSlope" in ds:
        y_min = ds.RescaleIntercept + ds.RescaleSlope * (
            -(2 ** (ds.BitsStored - 1)) if ds.PixelRepresentation else 0
        )
    else:
        y_min = -(2 ** (ds.BitsStored - 1)) if ds.PixelRepresentation else 0
    span = 2**ds.BitsStored - 1
    unit = (out - y_min) / span
    if ds.PhotometricInterpretation == "MONOCHROME1":
        unit = 1.0 - unit
    return np.asarray(np.rint(unit * 255.0), dtype=np.float64)


@pytest.mark.parametrize(
    ("name", "window"),
    [
        ("RG1_UNCR.dcm", Window(14000, 12000)),  # CR chest, MONOCHROME1
        ("CT_small.dcm", Window(40, 400)),  # CT: rescale to HU first (modality LUT)
        ("MR_small.dcm", Window(600, 1600)),
    ],
)
def test_explicit_window_matches_pydicom(name: str, window: Window) -> None:
    path = data_file(name)
    ds = dcmread(path)
    body = render_instance(path, window=window, max_size=4096)  # no scaling: pixel-exact comparison
    got = decode(body).astype(np.float64)
    want = expected_window(ds, ds.pixel_array, window)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1.0
    assert got.std() > 10  # not blank


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    ds = dcmread(data_file("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = tmp_path / "mono1.dcm"
    ds.save_as(inverted)
    window = Window(600, 1600)
    normal = decode(render_instance(data_file("MR_small.dcm"), window=window)).astype(int)
    flipped = decode(render_instance(inverted, window=window)).astype(int)
    assert np.array_equal(normal + flipped, np.full_like(normal, 255))


@pytest.mark.parametrize("compressed", ["MR_small_jp2klossless.dcm", "MR_small_RLE.dcm"])
def test_compressed_transfer_syntaxes_decode_like_the_original(compressed: str) -> None:
    original = decode(render_instance(data_file("MR_small.dcm")))
    assert np.array_equal(decode(render_instance(data_file(compressed))), original)


def test_default_uses_the_header_window_and_scales_down() -> None:
    path = data_file("RG1_UNCR.dcm")
    ds = dcmread(path)
    header = Window(float(ds.WindowCenter), float(ds.WindowWidth))
    assert render_instance(path) == render_instance(path, window=header)
    image = Image.open(io.BytesIO(render_instance(path, max_size=512)))
    assert image.size == (round(1841 * 512 / 1955), 512) and image.mode == "L"


def test_first_frame_only_and_colour_and_jpeg() -> None:
    frames = data_file("emri_small.dcm")
    ds = dcmread(frames)
    window = Window(500, 1000)
    got = decode(render_instance(frames, window=window)).astype(np.float64)
    assert got.shape == (64, 64)
    assert np.abs(got - expected_window(ds, ds.pixel_array[0], window)).max() <= 1.0
    rgb = Image.open(io.BytesIO(render_instance(data_file("SC_rgb.dcm"))))
    assert rgb.mode == "RGB" and rgb.size == (100, 100)
    jpeg = Image.open(io.BytesIO(render_instance(data_file("CT_small.dcm"), fmt=ImageFormat.JPEG)))
    assert jpeg.format == "JPEG"


def test_linear_window_edges_follow_the_standard() -> None:
    # PS3.3 C.11.2.1.2.1: x <= c - 0.5 - (w-1)/2 -> min; x > c - 0.5 + (w-1)/2 -> max
    window = Window(100, 51)
    x = np.array([74.5, 75.0, 100.0, 124.5, 125.0], dtype=np.float32)
    y = apply_window(x, window)
    assert y[0] == 0.0 and y[-1] == 1.0
    assert 0.0 < y[1] < y[2] < y[3] <= 1.0
    with pytest.raises(ValueError):
        Window(100, 0)


def test_heatmap_is_colour_mapped_with_proportional_alpha(tmp_path: Path) -> None:
    gray = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    rgba = colorize_heatmap(gray)
    assert np.array_equal(rgba[..., 3], gray)
    luminance = COLORMAP.astype(float) @ np.array([0.2126, 0.7152, 0.0722])
    assert np.all(np.diff(luminance) >= -0.5)  # perceptual map: brightness rises with the value
    path = tmp_path / "h.png"
    Image.fromarray(gray, mode="L").save(path)
    image = Image.open(io.BytesIO(render_heatmap(path)))
    assert image.mode == "RGBA" and image.size == (256, 8)
