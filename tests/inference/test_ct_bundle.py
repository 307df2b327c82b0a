"""Segmentation bundles: parsed against the allowlist (never evaluated), routed by the registry next
to the 2D classifiers."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from inference.bundle import read_bundle
from inference.demo.ct_train import (
    CT_MODEL_ID,
    CTTrainConfig,
    _inference_config,
    _metadata,
    build_unet,
)
from inference.demo.train import DEMO_MODEL_ID
from inference.errors import BundleError
from inference.registry import LoadedModel, ModelRegistry
from inference.segmentation import SegmentationModel

CFG = CTTrainConfig()
Edit = Callable[[dict[str, Any], dict[str, Any]], None]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ct-weights") / "model.pt"
    torch.save(build_unet(CFG).state_dict(), path)
    return path


@pytest.fixture
def make_ct_bundle(tmp_path: Path, weights: Path) -> Callable[..., Path]:
    """``make_ct_bundle(edit)`` → a CT bundle folder whose configs *edit* changed in place."""

    def make(edit: Edit | None = None, name: str = "ct") -> Path:
        inference = copy.deepcopy(_inference_config(CFG))
        metadata = copy.deepcopy(_metadata(CFG, 0, 1.0, {"dice_ge_8mm_mean": 0.9}))
        if edit is not None:
            edit(inference, metadata)
        root = tmp_path / "models" / name
        (root / "configs").mkdir(parents=True)
        (root / "models").mkdir()
        (root / "configs" / "inference.json").write_text(json.dumps(inference))
        (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
        (root / "models" / "model.pt").write_bytes(weights.read_bytes())
        return root

    return make


def test_the_ct_bundle_reads_as_a_segmentation(make_ct_bundle: Callable[..., Path]) -> None:
    spec = read_bundle(make_ct_bundle())
    assert spec.task == "segmentation" and spec.is_volumetric and spec.preprocessing is None
    assert spec.network_target == "monai.networks.nets.UNet"
    volume = spec.volume
    assert volume is not None
    assert volume.spacing == (2.5, 1.4, 1.4)
    assert volume.intensity == (-1000.0, 400.0, 0.0, 1.0) and volume.clip
    assert volume.sliding_window.roi_size == CFG.roi_size
    assert volume.sliding_window.sw_batch_size == 2 and volume.sliding_window.mode == "gaussian"
    assert (volume.activation, volume.threshold, volume.connectivity) == ("sigmoid", 0.5, 3)
    assert volume.min_volume_mm3 == CFG.min_volume_mm3
    assert volume.lung_field is not None
    assert (volume.lung_field.air_below_hu, volume.lung_field.closing_mm, volume.lung_field.min_fraction) == (
        -400.0,
        12.0,
        0.5,
    )
    (finding,) = spec.findings
    assert (finding.code, finding.urgency, finding.urgent_from_diameter_mm) == ("lung_nodule", 1, 8.0)
    assert spec.is_synthetic and spec.disclaimer == "synthetic demo model — not for clinical use"
    model = SegmentationModel(spec, device="cpu")
    assert model.is_volumetric and model.model_id == CT_MODEL_ID


def _set(path: str, value: Any) -> Edit:
    """An edit that sets ``inference.json`` (``i.``) or ``metadata.json`` (``m.``) at a dotted path."""

    def edit(inference: dict[str, Any], metadata: dict[str, Any]) -> None:
        node: Any = inference if path.startswith("i.") else metadata
        keys = path[2:].split(".")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        last = keys[-1]
        if value is DELETE:
            del node[int(last) if isinstance(node, list) else last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return edit


DELETE = object()


def _second_finding(inference: dict[str, Any], metadata: dict[str, Any]) -> None:
    inference["network_def"]["out_channels"] = 2
    metadata["clinic"]["findings"].append(
        {"code": "mass", "label": "Mass", "output_index": 1, "threshold": 0.5, "urgency": 0}
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("i.network_def._target_", "monai.networks.nets.SwinUNETR"), "not on the allowlist"),
        (_set("i.network_def._target_", "os.system"), "not on the allowlist"),
        (_set("i.network_def.channels", "$__import__('os').system('id')"), "never evaluated"),
        (_set("i.sliding_window.roi_size", "@network_def"), "references"),
        (_set("i.sliding_window", DELETE), "sliding_window"),
        (_set("i.sliding_window._target_", "monai.transforms.Compose"), "SlidingWindowInferer"),
        (_set("i.sliding_window.roi_size", [32, 96]), "roi_size must be 3"),
        (_set("i.sliding_window.sw_batch_size", 0), "sw_batch_size"),
        (_set("i.sliding_window.overlap", 1.5), "overlap"),
        (_set("i.sliding_window.mode", "nearest"), "mode"),
        (_set("i.preprocessing.transforms.0", DELETE), "no Spacingd"),
        (_set("i.preprocessing.transforms.0._target_", "ScaleIntensityd"), "not a segmentation step"),
        (_set("i.preprocessing.transforms.0.pixdim", [2.5, 0, 1.4]), "pixdim"),
        (_set("i.preprocessing.transforms.1._target_", "monai.transforms.Lambdad"), "not on the allowlist"),
        (_set("i.postprocessing.transforms.2.by_measure", False), "by_measure"),
        (_set("i.postprocessing.transforms.1.threshold", 0.0), "threshold"),
        (_set("i.postprocessing.transforms.0.sigmoid", False), "Activationsd"),
        (_set("i.postprocessing.transforms.2.connectivity", 6), "connectivity"),
        (_set("i.lung_field.closing_mm", 0), "closing_mm"),
        (_set("i.lung_field.min_fraction", "half"), "lung_field"),
        (_set("m.clinic.task", "detection"), "clinic.task"),
        (_second_finding, "exactly one finding"),
        (_set("m.clinic.findings.0.urgent_from_diameter_mm", -8), "urgent_from_diameter_mm"),
    ],
)
def test_configs_off_the_allowlist_are_refused(
    make_ct_bundle: Callable[..., Path], edit: Edit, message: str
) -> None:
    root = make_ct_bundle(edit)
    with pytest.raises(BundleError, match=message) as info:
        read_bundle(root)
    assert str(root) in info.value.path  # the error names the file


def test_registry_routes_both_kinds(demo_models_dir: Path) -> None:
    registry = ModelRegistry.from_directory(demo_models_dir, device="cpu")

    def ids(modality: str, body_part: str = "", view: str = "") -> list[str]:
        return [m.model_id for m in registry.select(modality, body_part, view)]

    for body_part in ("CHEST", "LUNG", "THORAX", "", "chest"):
        assert ids("CT", body_part) == [CT_MODEL_ID]
    assert ids("CT", "HEAD") == [] and ids("MR", "CHEST") == []
    assert ids("DX", "CHEST", "PA") == [DEMO_MODEL_ID]
    ct, cxr = registry.get(CT_MODEL_ID), registry.get(DEMO_MODEL_ID)
    assert isinstance(ct, SegmentationModel) and ct.is_volumetric
    assert isinstance(cxr, LoadedModel) and not cxr.is_volumetric
