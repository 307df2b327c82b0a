"""Synthetic chest CT phantoms: reproducible, in Hounsfield units, nodules where the labels say."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from inference.demo.ct_phantoms import LUNG_HU, CTPhantom, synth_ct, synth_ct_dataset

SHAPE, SPACING = (24, 192, 192), (2.5, 1.4, 1.4)


@pytest.fixture(scope="module")
def phantom() -> CTPhantom:
    return synth_ct(
        np.random.default_rng(11), nodule_diameters_mm=[16.0, 10.0, 6.0], shape=SHAPE, spacing=SPACING
    )


def test_same_seed_same_phantom_and_another_seed_another() -> None:
    a = synth_ct_dataset(2, seed=5, shape=SHAPE, spacing=SPACING)
    b = synth_ct_dataset(2, seed=5, shape=SHAPE, spacing=SPACING)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.volume, y.volume) and np.array_equal(x.labels, y.labels)
        assert x.nodules == y.nodules
    assert not np.array_equal(a[0].volume, a[1].volume)


def test_values_are_whole_hounsfield_units_of_air_tissue_and_lung(phantom: CTPhantom) -> None:
    v = phantom.volume
    assert v.dtype == np.float32 and v.shape == SHAPE
    assert np.array_equal(v, np.rint(v)) and v.min() >= -1024 and v.max() <= 3071
    assert np.median(v[:, :4, :4]) < -950  # air in the corner of the field of view
    lung = v[phantom.lungs & (phantom.labels == 0)]
    assert abs(float(np.median(lung)) - LUNG_HU) < 40
    assert 0.01 < phantom.lungs.mean() < 0.35  # a 60 mm slab: anywhere from the bases to the apices
    mid = v[v.shape[0] // 2]
    assert np.percentile(mid[~phantom.lungs[v.shape[0] // 2] & (mid > -500)], 50) == pytest.approx(40, abs=60)
    assert v.max() > 300  # bone: spine and ribs


def test_nodules_have_their_diameters_labels_and_solid_density(phantom: CTPhantom) -> None:
    assert [round(n.diameter_mm, 6) for n in phantom.nodules] == [16.0, 10.0, 6.0]
    assert sorted(np.unique(phantom.labels).tolist()) == [0, 1, 2, 3]
    voxel = float(np.prod(phantom.spacing))
    for n in phantom.nodules:
        mask = phantom.labels == n.label
        assert phantom.lungs[mask].all(), "a label lies outside the lungs"
        assert float(np.mean(phantom.volume[mask])) > -350, "a nodule must be solid (soft-tissue density)"
        sphere = np.pi / 6 * n.diameter_mm**3
        measured = mask.sum() * voxel
        if n.juxtapleural:  # the chest wall cuts part of it away
            assert 0.15 * sphere < measured < 1.1 * sphere
        else:
            assert measured == pytest.approx(sphere, rel=0.3)
        centre = np.rint(np.array(n.center_mm) / np.array(phantom.spacing)).astype(int)
        assert phantom.labels[tuple(centre)] == n.label


def test_juxtapleural_nodules_touch_the_chest_wall() -> None:
    p = synth_ct(
        np.random.default_rng(3),
        nodule_diameters_mm=[12.0, 12.0],
        juxtapleural_fraction=1.0,
        shape=SHAPE,
        spacing=SPACING,
    )
    assert p.nodules and all(n.juxtapleural for n in p.nodules)
    for n in p.nodules:
        grown = ndimage.binary_dilation(p.labels == n.label, iterations=2)
        assert (grown & ~p.lungs).any(), "a juxtapleural nodule must reach the lung's edge"
    free = synth_ct(
        np.random.default_rng(3),
        nodule_diameters_mm=[10.0],
        juxtapleural_fraction=0.0,
        shape=SHAPE,
        spacing=SPACING,
    )
    grown = ndimage.binary_dilation(free.labels == 1, iterations=1)
    assert not (grown & ~free.lungs).any(), "a free nodule stays clear of the pleura"


def test_physical_size_does_not_depend_on_the_grid() -> None:
    """The same nodule measures the same in mm3 at 0.7 mm and at 1.4 mm pixels."""
    volumes = []
    for spacing, size in (((2.5, 0.7, 0.7), 384), ((2.5, 1.4, 1.4), 192)):
        p = synth_ct(
            np.random.default_rng(8),
            shape=(24, size, size),
            spacing=spacing,
            nodule_diameters_mm=[14.0],
            juxtapleural_fraction=0.0,
        )
        volumes.append(p.nodule_volume_mm3(1))
    assert volumes[0] == pytest.approx(volumes[1], rel=0.1)
    assert volumes[0] == pytest.approx(np.pi / 6 * 14.0**3, rel=0.25)


def test_a_chest_without_nodules_and_bad_arguments() -> None:
    p = synth_ct(np.random.default_rng(1), nodule_diameters_mm=[], shape=SHAPE, spacing=SPACING)
    assert p.nodules == () and not p.labels.any()
    with pytest.raises(ValueError, match="too small"):
        synth_ct(np.random.default_rng(1), shape=(4, 16, 16))
    with pytest.raises(ValueError, match="positive"):
        synth_ct(np.random.default_rng(1), shape=(16, 64, 64), spacing=(0, 1, 1))
