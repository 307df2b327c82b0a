"""Synthetic phantoms: reproducible, labelled consistently, lesions inside the lungs."""

from __future__ import annotations

import numpy as np
import pytest

from inference.demo.phantoms import BITS_STORED, FINDINGS, synth_chest, synth_dataset


def test_same_seed_same_image() -> None:
    a = synth_chest(np.random.default_rng(42), consolidation=True, nodule=True, size=256)
    b = synth_chest(np.random.default_rng(42), consolidation=True, nodule=True, size=256)
    np.testing.assert_array_equal(a.image, b.image)
    for code in FINDINGS:
        np.testing.assert_array_equal(a.masks[code], b.masks[code])
    c = synth_chest(np.random.default_rng(43), consolidation=True, nodule=True, size=256)
    assert not np.array_equal(a.image, c.image)


def test_dataset_is_reproducible_and_prefix_stable() -> None:
    a = synth_dataset(9, seed=7, size=128)
    b = synth_dataset(5, seed=7, size=128)
    for p, q in zip(a[:5], b, strict=True):
        np.testing.assert_array_equal(p.image, q.image)
    assert not np.array_equal(synth_dataset(1, seed=8, size=128)[0].image, a[0].image)


def test_dataset_mix() -> None:
    phantoms = synth_dataset(28, seed=0, size=128)
    labels = np.array([[p.labels[c] for c in FINDINGS] for p in phantoms])
    assert (~labels.any(axis=1)).sum() == 8  # negatives
    assert labels.all(axis=1).sum() == 4  # both findings
    assert labels[:, 0].sum() == labels[:, 1].sum() == 12


@pytest.mark.parametrize(
    ("consolidation", "nodule"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_phantom_content(consolidation: bool, nodule: bool) -> None:
    p = synth_chest(np.random.default_rng(5), consolidation=consolidation, nodule=nodule, size=256)
    assert p.image.dtype == np.uint16 and p.image.shape == (256, 256)
    assert int(p.image.max()) <= 2**BITS_STORED - 1
    assert p.labels == {"consolidation": consolidation, "nodule_mass": nodule}
    for code in FINDINGS:
        mask = p.masks[code]
        assert mask.dtype == bool and mask.shape == (256, 256)
        assert mask.any() == p.labels[code]
        if mask.any():
            assert (mask & p.lungs).sum() / mask.sum() > 0.9, f"{code} lies outside the lungs"


def test_lesions_are_brighter_than_their_lung() -> None:
    """MONOCHROME2-like raw values: an opacity raises them."""
    rng = np.random.default_rng(11)
    base = synth_chest(rng, consolidation=False, nodule=True, size=256)
    mask = base.masks["nodule_mass"]
    lung_only = base.lungs & ~mask
    assert base.image[mask].mean() > base.image[lung_only].mean()


def test_display_is_unit_range() -> None:
    d = synth_dataset(1, seed=3, size=128)[0].to_display()
    assert d.dtype == np.float32 and d.min() == 0.0 and d.max() == 1.0
