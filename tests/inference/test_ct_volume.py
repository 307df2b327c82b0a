"""The pure array functions of 3D segmentation: grids, resampling, components, the lung field."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.volume import (
    connected_components,
    dice,
    equivalent_diameter,
    lung_air,
    lung_field_fraction,
    resample,
    scale_intensity_range,
    working_shape,
)


def test_working_shape_and_a_resampling_round_trip() -> None:
    assert working_shape((120, 512, 512), (2.5, 0.7, 0.7), (2.5, 1.4, 1.4)) == (120, 256, 256)
    assert working_shape((3, 5, 5), (1.0, 1.0, 1.0), (10.0, 10.0, 10.0)) == (1, 1, 1)
    ramp = np.broadcast_to(np.arange(64, dtype=np.float32), (8, 32, 64)).copy()
    down = resample(ramp, (8, 32, 32))
    assert torch.allclose(down[0, 0], torch.arange(32, dtype=torch.float32) * 2 + 0.5)  # 2-voxel means
    back = resample(down, ramp.shape).numpy()
    assert np.abs(back - ramp)[:, :, 1:-1].max() <= 0.5 + 1e-5  # linear: the ramp comes back
    assert np.array_equal(ramp, np.broadcast_to(np.arange(64, dtype=np.float32), (8, 32, 64)))


def test_scale_intensity_range_clips() -> None:
    out = scale_intensity_range(
        np.array([-2000.0, -1000.0, -300.0, 400.0, 900.0]), -1000, 400, 0, 1, clip=True
    )
    assert out.tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])
    with pytest.raises(ValueError):
        scale_intensity_range(np.zeros(3), 1, 1, 0, 1, clip=False)


def test_components_are_measured_sorted_and_filtered() -> None:
    mask = np.zeros((10, 20, 20), bool)
    mask[1:4, 1:4, 1:4] = True  # 27 voxels
    mask[5:9, 10:14, 10:14] = True  # 64 voxels
    mask[0, 19, 19] = True  # 1 voxel: below the minimum
    mask[4, 4, 4] = True  # touches the first one by a corner only
    probability = np.where(mask, 0.6, 0.0).astype(np.float32)
    probability[6, 11, 11] = 0.97
    labels, comps = connected_components(
        mask, probability, (2.0, 1.0, 1.0), min_volume_mm3=10.0, connectivity=3
    )
    assert [c.voxels for c in comps] == [64, 28]  # largest first; corner neighbours join with 26-connectivity
    assert comps[0].volume_mm3 == 128.0 and comps[0].max_probability == pytest.approx(0.97)
    assert comps[0].bbox == ((5, 9), (10, 14), (10, 14))
    assert set(np.unique(labels)) == {0, 1, 2} and labels[0, 19, 19] == 0
    _, faces = connected_components(mask, probability, (2.0, 1.0, 1.0), min_volume_mm3=0.0, connectivity=1)
    assert sorted(c.voxels for c in faces) == [1, 1, 27, 64]
    assert equivalent_diameter(np.pi / 6 * 8.0**3) == pytest.approx(8.0)
    assert dice(mask, mask) == 1.0 and dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def _chest() -> tuple[np.ndarray, np.ndarray]:
    """Air around a soft-tissue body holding one spherical 'lung' with a bite out of its side;
    the air mask and the lung's own air."""
    z, y, x = np.mgrid[0:24, 0:64, 0:64]
    air = np.ones((24, 64, 64), bool)
    air[(y - 32) ** 2 + (x - 32) ** 2 <= 28**2] = False
    lung = (z - 12) ** 2 + (y - 32) ** 2 + (x - 32) ** 2 <= 14**2
    # a juxtapleural nodule's place: its centre 2.5 mm inside the lung, as the phantoms have them
    bite = (z - 12) ** 2 + (y - 32) ** 2 + (x - 43.5) ** 2 <= 5**2
    air[lung & ~bite] = True
    return air, lung & ~bite


def test_lung_air_is_the_air_inside_the_patient() -> None:
    air, lung = _chest()
    assert np.array_equal(lung_air(air), lung)
    assert not lung_air(np.zeros((4, 8, 8), bool)).any()


def test_the_lung_field_takes_in_a_juxtapleural_bite_but_not_the_chest_wall() -> None:
    lungs = lung_air(_chest()[0])
    spacing = (1.0, 1.0, 1.0)
    z, y, x = np.mgrid[0:24, 0:64, 0:64]
    outline = (z - 12) ** 2 + (y - 32) ** 2 + (x - 32) ** 2 <= 14**2
    bite = np.argwhere(((z - 12) ** 2 + (y - 32) ** 2 + (x - 43.5) ** 2 <= 5**2) & outline)
    wall = np.array([[12, 32, 54], [12, 31, 55], [12, 33, 55]])  # soft tissue 8 mm outside the lung
    assert lung_field_fraction(lungs, bite, spacing, closing_mm=6.0) > 0.7
    assert lung_field_fraction(lungs, bite, spacing, closing_mm=2.0) < 0.3  # too tight to take it in
    assert lung_field_fraction(lungs, wall, spacing, closing_mm=6.0) == 0.0
    assert lung_field_fraction(lungs, np.zeros((0, 3), int), spacing, closing_mm=6.0) == 0.0
