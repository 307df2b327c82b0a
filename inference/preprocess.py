"""Preprocessing: pure array functions and a MONAI-style dictionary wrapper around them.

The array functions never change their input (they return new arrays), so a caller's
``ImageInput.pixels`` stays as it was; :class:`Preprocessd` copies the dictionary it is given.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms.transform import MapTransform

from inference.bundle import PreprocessSpec


def resize_image(image: np.ndarray, spatial_size: Sequence[int], mode: str = "bilinear") -> np.ndarray:
    """Resize an H×W image to ``spatial_size`` (the whole image: no crop, aspect not kept).

    ``bilinear`` is antialiased (a low-pass before decimation) so that a 2000-pixel radiograph and a
    256-pixel phantom reach the same input statistics; ``area`` averages pixel blocks.
    """
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"expected an H×W image, got shape {arr.shape}")
    size = (int(spatial_size[0]), int(spatial_size[1]))
    if arr.shape == size:
        return arr.copy()
    t = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
    if mode == "area":
        out = F.interpolate(t, size=size, mode="area")
    elif mode == "bilinear":
        out = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    else:
        raise ValueError(f"unknown resize mode {mode!r}")
    return out[0, 0].numpy().copy()


def normalize_intensity(image: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Zero mean, unit standard deviation per image (MONAI's NormalizeIntensity, not ``nonzero``).

    Per-image standardisation makes the model indifferent to the window a modality chose.
    """
    arr = np.asarray(image, dtype=np.float32)
    std = float(arr.std())
    return ((arr - float(arr.mean())) / max(std, eps)).astype(np.float32)


def scale_intensity(image: np.ndarray) -> np.ndarray:
    """Rescale to [0, 1] by the image's own min and max (a constant image becomes zeros)."""
    arr = np.asarray(image, dtype=np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros_like(arr)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def preprocess(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Display-ready H×W [0, 1] pixels → the model's input, channel-first ``(1, H', W')`` float32."""
    out = resize_image(pixels, spec.spatial_size, spec.resize_mode)
    if spec.normalize == "zscore":
        out = normalize_intensity(out)
    elif spec.normalize == "scale":
        out = scale_intensity(out)
    elif spec.normalize != "none":
        raise ValueError(f"unknown normalisation {spec.normalize!r}")
    return out[None].astype(np.float32, copy=False)


class Preprocessd(MapTransform):
    """Dictionary version of :func:`preprocess` for ``monai.transforms.Compose`` pipelines.

    Returns a new dictionary; the input mapping and its arrays are left untouched.
    """

    def __init__(
        self, keys: Hashable | Sequence[Hashable], spec: PreprocessSpec, allow_missing_keys: bool = False
    ):
        super().__init__(keys, allow_missing_keys)
        self.spec = spec

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = preprocess(np.asarray(d[key]), self.spec)
        return d
