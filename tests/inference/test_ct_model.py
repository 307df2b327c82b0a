"""The trained CT nodule model (demo_models_dir) on held-out phantoms at a scan's resolution:
Dice ≥ 0.8 for nodules of 8 mm and more, each counted once, and the read's measurements."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from inference.demo.ct_phantoms import CTPhantom, synth_ct
from inference.demo.ct_train import CT_MODEL_ID, NoduleScore, phantom_volume, score_volume
from inference.registry import ModelRegistry
from inference.segmentation import SegmentationModel
from inference.types import ModelResult, Urgency, VolumeInput
from inference.volume import equivalent_diameter

#: Neither the training seeds nor the bundle's own held-out seeds (ct_train uses 0 and 2_000_003).
HELD_OUT_SEED = 77_001
#: 0.7 mm pixels and 2.5 mm slices like the benchmark series, 40 slices to keep the test short.
SHAPE, SPACING = (40, 512, 512), (2.5, 0.7, 0.7)
CASES = ((20.0, 8.0, 6.0), (12.0, 10.0, 4.0), (15.0, 8.0))


@dataclass(frozen=True)
class Read:
    phantom: CTPhantom
    result: ModelResult
    scores: list[NoduleScore]
    false_positives: int


@pytest.fixture(scope="module")
def ct_model(demo_models_dir: Path) -> SegmentationModel:
    model = ModelRegistry.from_directory(demo_models_dir, device="cpu").get(CT_MODEL_ID)
    assert isinstance(model, SegmentationModel)
    return model


@pytest.fixture(scope="module")
def reads(ct_model: SegmentationModel) -> list[Read]:
    out = []
    for i, child in enumerate(np.random.SeedSequence(HELD_OUT_SEED).spawn(len(CASES))):
        phantom = synth_ct(
            np.random.default_rng(child), shape=SHAPE, spacing=SPACING, nodule_diameters_mm=CASES[i]
        )
        result = ct_model.predict_volume(phantom_volume(phantom))
        scores, false_positives = score_volume(result, phantom)
        out.append(Read(phantom, result, scores, false_positives))
    return out


def test_nodules_of_8_mm_and_more_are_segmented_and_counted_once(reads: list[Read]) -> None:
    large = [s for r in reads for s in r.scores if s.diameter_mm >= 8.0 - 1e-6]
    assert len(large) == 6
    report = [(round(s.diameter_mm), s.juxtapleural, round(s.dice, 3), s.components) for s in large]
    assert all(s.components == 1 for s in large), f"each nodule is one component: {report}"
    pooled = (
        2 * sum(s.overlap_voxels for s in large) / sum(s.truth_voxels + s.predicted_voxels for s in large)
    )
    assert pooled >= 0.8, report
    assert float(np.mean([s.dice for s in large])) >= 0.8, report
    # the weakest are juxtapleural nodules (the model must draw their base along the pleura, which
    # the nodule hides) and nodules wedged against the heart: found, but less well outlined
    assert min(s.dice for s in large) >= 0.4, report
    # false positives: vessel trunks where they cross into the lung at the hila (1.6 a volume on 12
    # held-out volumes; 0 to 7 in one volume): a known weakness of the small demo model
    assert sum(r.false_positives for r in reads) <= 3 * len(reads)


def test_measurements_follow_the_components(reads: list[Read]) -> None:
    for read in reads:
        result = read.result
        measured = {m.code: m for m in result.measurements}
        assert {m.unit for m in result.measurements} == {"{count}", "mm", "mm3"}
        assert all(m.finding_code == "lung_nodule" for m in result.measurements)
        counted = sum(1 for s in read.scores if s.components) + read.false_positives
        assert measured["nodule_count"].value == counted
        assert result.mask is not None
        components, n = ndimage.label(result.mask, structure=np.ones((3, 3, 3), bool))
        voxels = np.bincount(components.ravel())[1:]
        voxel = float(np.prod(read.phantom.spacing))
        assert n == measured["nodule_count"].value
        assert measured["largest_diameter"].value == pytest.approx(
            equivalent_diameter(voxels.max() * voxel), abs=0.01
        )
        truth = max(read.phantom.nodule_volume_mm3(k.label) for k in read.phantom.nodules)
        assert measured["largest_diameter"].value == pytest.approx(equivalent_diameter(truth), rel=0.2)
        voxel = float(np.prod(read.phantom.spacing))
        assert measured["total_volume"].value == pytest.approx(int(result.mask.sum()) * voxel, rel=1e-3)  # type: ignore[union-attr]
        (finding,) = result.findings
        assert finding.code == "lung_nodule" and finding.positive and finding.heatmap is None
        assert finding.urgency == Urgency.URGENT  # every case has a nodule of 8 mm or more
        assert (
            result.mask is not None
            and result.mask.dtype == np.uint8
            and set(np.unique(result.mask)) <= {0, 1}
        )
        assert result.mask_sop_uids == phantom_volume(read.phantom).sop_instance_uids
        key = result.mask_sop_uids.index(result.sop_instance_uid)
        assert result.mask[key].any(), "the key slice shows the largest nodule"


def test_a_chest_without_or_with_small_nodules_is_routine(ct_model: SegmentationModel) -> None:
    """Six chests without nodules or with small ones (< 8 mm): every read is routine and its
    largest component under 8 mm. False positives are counted over all six, not per chest: one
    chest gets 0 to 3 (r2 and r3 alike), so a bound on a single chest only said which bundle was
    lucky there; over the six, r3 gives 6 and r2 gave 7."""
    rng = np.random.default_rng(HELD_OUT_SEED + 1)
    false_positives = 0
    cases = ([], [6.0], [], [4.0, 6.0], [], [6.0])
    for diameters in cases:
        phantom = synth_ct(rng, shape=(40, 256, 256), spacing=(2.5, 1.4, 1.4), nodule_diameters_mm=diameters)
        result = ct_model.predict_volume(phantom_volume(phantom))
        measured = {m.code: m.value for m in result.measurements}
        assert measured["largest_diameter"] < 8.0
        assert result.urgency == Urgency.ROUTINE  # below 8 mm nothing is urgent
        false_positives += max(0, int(measured["nodule_count"]) - len(diameters))
    assert false_positives <= 1.5 * len(cases)  # ~1 a chest, as the bundle's own evaluation says


def test_no_component_means_zero_probability_and_an_empty_mask(ct_model: SegmentationModel) -> None:
    air = np.full((12, 96, 96), -1000.0, dtype=np.float32)  # nothing but air: nothing to find
    uids = tuple(f"2.25.9.{k}" for k in range(12))
    result = ct_model.predict_volume(VolumeInput(hu=air, spacing=(2.5, 1.4, 1.4), sop_instance_uids=uids))
    assert {m.code: m.value for m in result.measurements} == {
        "nodule_count": 0.0,
        "largest_diameter": 0.0,
        "total_volume": 0.0,
    }
    (finding,) = result.findings
    assert finding.probability == 0.0 and not finding.positive and result.urgency == Urgency.ROUTINE
    assert result.mask is not None and result.mask.shape == air.shape and not result.mask.any()
    assert result.sop_instance_uid == uids[6]  # the middle slice when there is no nodule


def test_input_is_left_alone_and_sw_batch_size_changes_nothing(ct_model: SegmentationModel) -> None:
    phantom = synth_ct(
        np.random.default_rng(5), shape=(24, 256, 256), spacing=(2.5, 1.4, 1.4), nodule_diameters_mm=[12.0]
    )
    volume = phantom_volume(phantom)
    before = volume.hu.copy()
    x = ct_model.prepare(volume)
    one, two = ct_model.forward(x, sw_batch_size=1), ct_model.forward(x, sw_batch_size=2)
    assert torch.allclose(one, two, atol=1e-5)
    assert np.array_equal(volume.hu, before)


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)"
)
def test_cuda_matches_cpu(demo_models_dir: Path, ct_model: SegmentationModel) -> None:
    gpu = ModelRegistry.from_directory(demo_models_dir, device="cuda").get(CT_MODEL_ID)
    assert isinstance(gpu, SegmentationModel)
    phantom = synth_ct(
        np.random.default_rng(HELD_OUT_SEED + 2),
        shape=SHAPE,
        spacing=SPACING,
        nodule_diameters_mm=[15.0, 10.0],
    )
    volume = phantom_volume(phantom)
    on_gpu, on_cpu = gpu.predict_volume(volume), ct_model.predict_volume(volume)
    assert on_gpu.device.startswith("cuda") and on_cpu.device == "cpu"
    assert on_gpu.mask is not None and on_cpu.mask is not None
    agreement = (on_gpu.mask == on_cpu.mask).mean()
    assert agreement > 0.9999
    assert on_gpu.findings[0].probability == pytest.approx(on_cpu.findings[0].probability, abs=2e-3)
    for g, c in zip(on_gpu.measurements, on_cpu.measurements, strict=True):
        assert g.value == pytest.approx(c.value, rel=0.02, abs=0.5)
