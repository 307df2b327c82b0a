"""train_ct_demo on a tiny configuration: a loadable bundle, evaluated, written atomically, seeded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from inference.bundle import read_bundle
from inference.demo.ct_phantoms import synth_ct
from inference.demo.ct_train import (
    CT_MODEL_ID,
    RECIPE,
    CTTrainConfig,
    NoduleScore,
    ct_bundle_exists,
    score_volume,
    summarise,
    train_ct_demo,
)
from inference.registry import ModelRegistry
from inference.types import ModelResult

TINY = CTTrainConfig(
    n_train=2,
    train_slices=(16, 16),
    train_size=(96, 96),
    steps=3,
    batch_size=2,
    n_eval=1,
    eval_shape=(16, 128, 128),
    eval_spacing=(2.5, 1.4, 1.4),
)


def test_writes_a_loadable_evaluated_bundle_with_progress(tmp_path: Path) -> None:
    calls: list[tuple[str, int, int]] = []
    path = train_ct_demo(tmp_path, seed=3, progress=lambda *a: calls.append(a), config=TINY)
    assert path == tmp_path / CT_MODEL_ID and ct_bundle_exists(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [CT_MODEL_ID]  # no temporary folder left
    assert {stage for stage, _, _ in calls} == {"phantoms", "train", "evaluate"}
    assert ("train", TINY.steps, TINY.steps) in calls
    meta = json.loads((path / "configs" / "metadata.json").read_text())
    clinic = meta["clinic"]
    assert clinic["training"]["recipe"] == RECIPE and clinic["training"]["seed"] == 3
    evaluation = clinic["evaluation"]
    assert evaluation["volumes"] == 1
    assert len(evaluation["per_nodule"]) == evaluation["nodules_ge_8mm"] + evaluation["nodules_lt_8mm"] >= 2
    assert meta["name"] == "Lung nodule segmentation (demo)" and meta["version"] == "0.1.0"
    model = ModelRegistry.from_directory(tmp_path, device="cpu").get(CT_MODEL_ID)
    assert model.is_volumetric and model.is_synthetic


def test_same_seed_same_weights(tmp_path: Path) -> None:
    a = train_ct_demo(tmp_path / "a", seed=4, config=TINY)
    b = train_ct_demo(tmp_path / "b", seed=4, config=TINY)
    wa = torch.load(a / "models" / "model.pt", weights_only=True)
    wb = torch.load(b / "models" / "model.pt", weights_only=True)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_stale_or_partial_bundle_is_not_taken(tmp_path: Path) -> None:
    assert not ct_bundle_exists(tmp_path)
    path = train_ct_demo(tmp_path, seed=5, config=TINY)
    meta_path = path / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["clinic"]["training"]["recipe"] = "ct-nodule-demo-r0"
    meta_path.write_text(json.dumps(meta))
    assert not ct_bundle_exists(tmp_path)
    again = train_ct_demo(tmp_path, seed=5, config=TINY)  # replaces the stale bundle in place
    assert ct_bundle_exists(tmp_path) and read_bundle(again).version == "0.1.0"
    (again / "models" / "model.pt").unlink()
    assert not ct_bundle_exists(tmp_path)


def test_scoring_counts_splits_misses_and_false_positives() -> None:
    phantom = synth_ct(
        np.random.default_rng(2),
        shape=(16, 96, 96),
        spacing=(2.5, 1.4, 1.4),
        nodule_diameters_mm=[12.0, 6.0],
        juxtapleural_fraction=0.0,
    )
    mask = (phantom.labels == 1).astype(np.uint8)  # the 12 mm one exactly, the 6 mm one missed
    x = int(np.argwhere(mask)[:, 2].mean())
    mask[:, :, x] = 0  # a one-voxel cut through the middle: two components
    mask[0, 0:3, 0:3] = 1  # a false positive far away
    result = ModelResult("m", "m", "1", True, "", "cpu", 0.0, (), "", mask=mask)
    scores, false_positives = score_volume(result, phantom)
    big, small = scores
    assert big.components == 2 and 0.8 < big.dice < 1.0
    assert small.components == 0 and small.dice == 0.0
    assert false_positives == 1
    summary = summarise([*scores, NoduleScore(8.0, True, 0.9, 1)], false_positives, 1)
    assert summary["nodules_ge_8mm"] == 2 and summary["counted_ge_8mm"] == 1
    assert summary["found_lt_8mm"] == 0 and summary["dice_ge_8mm_min"] == round(min(big.dice, 0.9), 4)
    pooled = 2 * big.overlap_voxels / (big.truth_voxels + big.predicted_voxels)  # the extra one has no voxels
    assert summary["dice_ge_8mm_pooled"] == round(pooled, 4) == round(big.dice, 4)
