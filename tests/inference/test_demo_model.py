"""The trained demo model, through the real path: phantom → DICOM file → load_image → registry.select
→ predict. Phantoms come from a seed the training never used, at another size (512² here, 256² in
training), written with several encodings (MONOCHROME1, rescale, RLE, JPEG 2000)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydicom.data import get_testdata_file

from inference.demo.phantoms import FINDINGS, synth_dataset
from inference.demo.train import DEMO_MODEL_ID
from inference.dicom_io import load_image
from inference.metrics import roc_auc
from inference.registry import LoadedModel, ModelRegistry
from inference.types import SYNTHETIC_DISCLAIMER, ImageInput, ModelResult
from tests.inference.helpers import DICOM_VARIANTS, phantom_dataset

HELD_OUT_SEED = 20_240_517  # training uses seed 0 and its validation split seed 1_000_003
N_HELD_OUT = 140  # 60 positives and 80 negatives per finding
MIN_AUC = 0.95
MIN_HEATMAP_HITS = 0.70
#: The lesion mask is resized to the heatmap (any overlap counts) and dilated by this many heatmap
#: pixels (2 px at 128² ≈ 5.5 mm on the phantom's 350 mm field) before the peak is looked up.
HIT_MARGIN_PX = 2


@dataclass
class HeldOut:
    labels: np.ndarray  # (N, F) bool
    probs: np.ndarray  # (N, F)
    results: list[ModelResult]
    masks: list[dict[str, np.ndarray]]
    via_dicom: int


@pytest.fixture(scope="module")
def held_out(demo_registry: ModelRegistry, tmp_path_factory: pytest.TempPathFactory) -> HeldOut:
    folder = tmp_path_factory.mktemp("held_out_dicom")
    phantoms = synth_dataset(N_HELD_OUT, seed=HELD_OUT_SEED, size=512)
    results: list[ModelResult] = []
    via_dicom = 0
    for i, phantom in enumerate(phantoms):
        if i % 2 == 0:  # half of the set goes through a DICOM file on disk
            path = folder / f"{i}.dcm"
            phantom_dataset(phantom, **DICOM_VARIANTS[(i // 2) % len(DICOM_VARIANTS)]).save_as(
                path, enforce_file_format=True
            )
            image = load_image(path)
            via_dicom += 1
        else:  # the rest as a worker would hand over an array (a DX AP with no body part)
            image = ImageInput(pixels=phantom.to_display(), modality="DX", view_position="AP")
        models = demo_registry.select(image.modality, image.body_part, image.view_position)
        assert [m.model_id for m in models] == [DEMO_MODEL_ID]
        results.append(models[0].predict(image, explain=True))
    return HeldOut(
        labels=np.array([[p.labels[c] for c in FINDINGS] for p in phantoms]),
        probs=np.array([[r.finding(c).probability for c in FINDINGS] for r in results]),
        results=results,
        masks=[p.masks for p in phantoms],
        via_dicom=via_dicom,
    )


@pytest.mark.parametrize("code", FINDINGS)
def test_auc_on_held_out_phantoms(held_out: HeldOut, code: str) -> None:
    k = FINDINGS.index(code)
    assert held_out.via_dicom >= N_HELD_OUT // 2
    auc = roc_auc(held_out.probs[:, k], held_out.labels[:, k])
    assert auc >= MIN_AUC, f"{code}: AUC {auc:.3f} < {MIN_AUC}"


@pytest.mark.parametrize("code", FINDINGS)
def test_operating_threshold_is_useful(held_out: HeldOut, code: str) -> None:
    """The Youden threshold chosen on the validation split carries over to unseen phantoms."""
    k = FINDINGS.index(code)
    positive = np.array([r.finding(code).positive for r in held_out.results])
    truth = held_out.labels[:, k]
    sensitivity = (positive & truth).sum() / truth.sum()
    specificity = (~positive & ~truth).sum() / (~truth).sum()
    assert sensitivity + specificity - 1.0 >= 0.7, f"{code}: sens {sensitivity:.2f} spec {specificity:.2f}"


def peak_in_lesion(heatmap: np.ndarray, mask: np.ndarray, margin: int = HIT_MARGIN_PX) -> bool:
    small = F.interpolate(
        torch.from_numpy(mask.astype(np.float32))[None, None], size=heatmap.shape, mode="area"
    )
    if margin:
        small = F.max_pool2d(small, 2 * margin + 1, stride=1, padding=margin)
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return bool(small[0, 0, row, col] > 0)


@pytest.mark.parametrize("code", FINDINGS)
def test_gradcam_peak_lies_in_the_lesion(held_out: HeldOut, code: str) -> None:
    k = FINDINGS.index(code)
    hits = []
    for result, masks, truth in zip(held_out.results, held_out.masks, held_out.labels[:, k], strict=True):
        if truth:
            heatmap = result.finding(code).heatmap
            assert heatmap is not None
            hits.append(peak_in_lesion(heatmap, masks[code]))
    rate = float(np.mean(hits))
    assert rate >= MIN_HEATMAP_HITS, (
        f"{code}: Grad-CAM peak in the lesion for {rate:.0%} of {len(hits)} positives"
    )


def test_peak_check_can_fail() -> None:
    heatmap = np.zeros((128, 128), np.float32)
    heatmap[10, 10] = 1.0
    mask = np.zeros((512, 512), bool)
    mask[300:340, 300:340] = True
    assert not peak_in_lesion(heatmap, mask)
    heatmap[80, 80] = 2.0
    assert peak_in_lesion(heatmap, mask)


def test_results_carry_the_bundle_identity_and_disclaimer(held_out: HeldOut, demo_models_dir: Path) -> None:
    meta = json.loads((demo_models_dir / DEMO_MODEL_ID / "configs" / "metadata.json").read_text())
    thresholds = {f["code"]: f["threshold"] for f in meta["clinic"]["findings"]}
    for result in held_out.results[:10]:
        assert result.model_id == DEMO_MODEL_ID
        assert result.model_name == meta["name"] and result.model_version == meta["version"]
        assert result.is_synthetic is True
        assert result.disclaimer == SYNTHETIC_DISCLAIMER == "synthetic demo model — not for clinical use"
        assert result.device == "cpu" and result.inference_ms > 0
        assert [f.code for f in result.findings] == list(FINDINGS)
        for f in result.findings:
            assert 0.0 <= f.probability <= 1.0
            assert f.threshold == thresholds[f.code]
            assert f.heatmap is not None and f.heatmap.dtype == np.float32
            assert f.heatmap.shape == tuple(meta["network_data_format"]["inputs"]["image"]["spatial_shape"])
            assert 0.0 <= f.heatmap.min() and f.heatmap.max() <= 1.0


def test_bundle_metadata_records_training(demo_models_dir: Path) -> None:
    meta = json.loads((demo_models_dir / DEMO_MODEL_ID / "configs" / "metadata.json").read_text())
    for key in (
        "version",
        "changelog",
        "monai_version",
        "pytorch_version",
        "network_data_format",
        "task",
        "description",
        "authors",
        "copyright",
        "intended_use",
    ):
        assert key in meta, key
    clinic = meta["clinic"]
    assert clinic["is_synthetic"] is True and clinic["disclaimer"] == SYNTHETIC_DISCLAIMER
    assert clinic["training"]["seed"] == 0
    assert clinic["training"]["n_train"] > 0 and clinic["training"]["n_validation"] > 0
    for finding in clinic["findings"]:
        assert 0.0 < finding["threshold"] < 1.0
        assert finding["validation_auc"] >= MIN_AUC


def test_explain_false_gives_the_same_probabilities_without_heatmaps(demo_registry: ModelRegistry) -> None:
    model = demo_registry.get(DEMO_MODEL_ID)
    phantom = synth_dataset(4, seed=HELD_OUT_SEED + 1, size=256)[3]
    image = ImageInput(pixels=phantom.to_display(), modality="CR")
    before = image.pixels.copy()
    with_maps = model.predict(image, explain=True)
    without = model.predict(image, explain=False)
    np.testing.assert_array_equal(image.pixels, before)  # the caller's array is not touched
    assert all(f.heatmap is None for f in without.findings)
    for a, b in zip(with_maps.findings, without.findings, strict=True):
        assert a.probability == pytest.approx(b.probability, abs=1e-5)


def test_real_chest_radiograph_runs(demo_registry: ModelRegistry) -> None:
    """A real CR (MONOCHROME1, JPEG 2000) goes through; no claim about what a demo model sees in it."""
    image = load_image(str(get_testdata_file("RG1_J2KR.dcm")))
    [model] = demo_registry.select(image.modality, image.body_part, image.view_position)
    result = model.predict(image)
    assert result.sop_instance_uid == image.sop_instance_uid
    assert all(0.0 <= f.probability <= 1.0 for f in result.findings)


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)"
)
def test_cuda_matches_cpu(demo_models_dir: Path, demo_registry: ModelRegistry) -> None:
    gpu = ModelRegistry.from_directory(demo_models_dir, device="cuda").get(DEMO_MODEL_ID)
    cpu: LoadedModel = demo_registry.get(DEMO_MODEL_ID)
    for phantom in synth_dataset(7, seed=HELD_OUT_SEED + 2, size=512):
        image = ImageInput(pixels=phantom.to_display(), modality="CR")
        on_gpu, on_cpu = gpu.predict(image), cpu.predict(image)
        assert on_gpu.device.startswith("cuda")
        for g, c in zip(on_gpu.findings, on_cpu.findings, strict=True):
            assert g.probability == pytest.approx(c.probability, abs=2e-3)
            assert g.heatmap is not None and c.heatmap is not None
            assert np.corrcoef(g.heatmap.ravel(), c.heatmap.ravel())[0, 1] > 0.98 or c.heatmap.max() == 0
