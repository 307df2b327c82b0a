"""Pure preprocessing functions and their dictionary wrapper."""

from __future__ import annotations

import numpy as np
import pytest
from monai.transforms.compose import Compose

from inference.bundle import PreprocessSpec
from inference.preprocess import Preprocessd, normalize_intensity, preprocess, resize_image, scale_intensity


@pytest.fixture
def image() -> np.ndarray:
    rng = np.random.default_rng(1)
    img = rng.random((300, 220), dtype=np.float32)
    img[100:150, 50:90] = 1.0
    return img


@pytest.mark.parametrize("mode", ["bilinear", "area"])
def test_resize_whole_image(image: np.ndarray, mode: str) -> None:
    before = image.copy()
    out = resize_image(image, (128, 128), mode)
    assert out.shape == (128, 128) and out.dtype == np.float32
    np.testing.assert_array_equal(image, before)
    # the bright block keeps its place relative to the whole image (resized, not cropped)
    rows, cols = np.nonzero(out > 0.9)
    assert abs(rows.mean() / 128 - 125 / 300) < 0.02
    assert abs(cols.mean() / 128 - 70 / 220) < 0.02
    assert resize_image(out, (128, 128)) is not out


def test_resize_refuses_non_2d() -> None:
    with pytest.raises(ValueError):
        resize_image(np.zeros((3, 8, 8), np.float32), (4, 4))


def test_normalisations(image: np.ndarray) -> None:
    z = normalize_intensity(image)
    assert abs(float(z.mean())) < 1e-5 and abs(float(z.std()) - 1.0) < 1e-4
    assert np.all(normalize_intensity(np.full((4, 4), 0.3, np.float32)) == 0.0)
    s = scale_intensity(image * 5 + 2)
    assert s.min() == 0.0 and s.max() == 1.0
    assert np.all(scale_intensity(np.ones((3, 3), np.float32)) == 0.0)


def test_preprocess_channel_first(image: np.ndarray) -> None:
    out = preprocess(image, PreprocessSpec(spatial_size=(96, 64), normalize="zscore"))
    assert out.shape == (1, 96, 64) and out.dtype == np.float32
    assert abs(float(out.mean())) < 1e-4


def test_dictionary_wrapper_leaves_the_input_alone(image: np.ndarray) -> None:
    spec = PreprocessSpec(spatial_size=(64, 64))
    data = {"image": image, "uid": "1.2.3"}
    before = image.copy()
    out = Compose([Preprocessd(keys="image", spec=spec)])(data)
    assert out is not data
    assert data["image"] is image
    np.testing.assert_array_equal(image, before)
    assert out["image"].shape == (1, 64, 64)
    assert out["uid"] == "1.2.3"
    np.testing.assert_array_equal(out["image"], preprocess(image, spec))
