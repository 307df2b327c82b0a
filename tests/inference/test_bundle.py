"""Bundle parsing: allowlisted targets and literal arguments only, loud errors naming the file."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from inference.bundle import read_bundle
from inference.errors import BundleError
from inference.registry import ModelNotFoundError, ModelRegistry
from tests.inference.conftest import MakeBundle
from tests.inference.helpers import VALID_INFERENCE, valid_metadata


def inference_with(path: list[str | int], value: Any) -> dict[str, Any]:
    config = copy.deepcopy(VALID_INFERENCE)
    node: Any = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return config


def test_valid_bundle_parses_and_loads(make_bundle: MakeBundle) -> None:
    root = make_bundle("good")
    spec = read_bundle(root)
    assert (spec.model_id, spec.name, spec.version) == ("good", "Test model", "9.9.9")
    assert spec.preprocessing.spatial_size == (64, 64)
    assert [f.code for f in spec.findings] == ["a", "b"]
    registry = ModelRegistry.from_directory(root.parent, device="cpu")
    assert [m.model_id for m in registry.models] == ["good"]
    assert registry.get("good").version == "9.9.9"


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (["network_def", "out_channels"], "$1 + 1", "expressions"),
        (["imports"], ["$import os"], "expressions"),
        (["network_def", "spatial_dims"], "@spatial_dims", "references"),
        (["preprocessing", "transforms", 0, "spatial_size"], "%configs/train.json#size", "macros"),
        (["network_def", "_target_"], "torch.nn.Linear", "allowlist"),
        (["network_def", "_target_"], "os.system", "allowlist"),
        (["handlers"], [{"_target_": "monai.handlers.StatsHandler"}], "allowlist"),
        (["network_def", "_requires_"], "numpy", "not allowed"),
        (["network_def", "_mode_"], "callable", "not allowed"),
        (["network_def", "act"], {"_target_": "DenseNet121"}, "literal"),
        (["network_def", "pretrained"], True, "downloaded"),
    ],
)
def test_refused_configs_name_the_file(
    make_bundle: MakeBundle, path: list[str | int], value: Any, needle: str
) -> None:
    root = make_bundle(inference=inference_with(path, value))
    with pytest.raises(BundleError) as info:
        ModelRegistry.from_directory(root.parent, device="cpu")
    assert info.value.path == str(root / "configs" / "inference.json")
    assert needle in info.value.reason
    assert "inference.json" in str(info.value)


def test_expressions_are_never_evaluated(make_bundle: MakeBundle, tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    config = inference_with(
        ["network_def", "out_channels"], f"$__import__('pathlib').Path({str(canary)!r}).touch()"
    )
    root = make_bundle(inference=config)
    with pytest.raises(BundleError):
        ModelRegistry.from_directory(root.parent, device="cpu")
    assert not canary.exists()


def test_missing_weights(make_bundle: MakeBundle) -> None:
    root = make_bundle(weights=False)
    with pytest.raises(BundleError) as info:
        ModelRegistry.from_directory(root.parent, device="cpu")
    assert info.value.path == str(root / "models" / "model.pt")
    assert "missing" in info.value.reason


def test_garbage_weights(make_bundle: MakeBundle) -> None:
    root = make_bundle(weights=b"not a torch file")
    with pytest.raises(BundleError) as info:
        ModelRegistry.from_directory(root.parent, device="cpu")
    assert info.value.path == str(root / "models" / "model.pt")


def test_weights_of_another_architecture(make_bundle: MakeBundle) -> None:
    metadata = valid_metadata("wrong")
    root = make_bundle(
        "wrong", inference=inference_with(["network_def", "out_channels"], 3), metadata=metadata
    )
    with pytest.raises(BundleError) as info:
        ModelRegistry.from_directory(root.parent, device="cpu")
    assert info.value.path.endswith("model.pt")
    assert "do not fit" in info.value.reason


def test_invalid_json(make_bundle: MakeBundle) -> None:
    root = make_bundle(inference="{not json")
    with pytest.raises(BundleError, match="not valid JSON") as info:
        read_bundle(root)
    assert info.value.path.endswith("inference.json")


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda m: m.pop("clinic"), "'clinic' section"),
        (lambda m: m.pop("version"), "version is missing"),
        (lambda m: m["clinic"]["findings"][0].update(threshold=1.5), "threshold"),
        (lambda m: m["clinic"]["findings"][0].update(urgency=7), "urgency"),
        (lambda m: m["clinic"]["findings"][1].update(output_index=5), "output_index"),
        (lambda m: m["clinic"]["routing"].update(modalities=[]), "modalities"),
        (lambda m: m["clinic"].update(disclaimer="fine for patients"), "disclaimer"),
    ],
)
def test_bad_metadata_names_metadata_json(make_bundle: MakeBundle, mutate: Any, needle: str) -> None:
    metadata = valid_metadata("test-bundle")
    mutate(metadata)
    root = make_bundle(metadata=metadata)
    with pytest.raises(BundleError) as info:
        read_bundle(root)
    assert info.value.path == str(root / "configs" / "metadata.json")
    assert needle in info.value.reason


def test_folder_without_configs_is_loud(tmp_path: Path) -> None:
    (tmp_path / "models" / "stray").mkdir(parents=True)
    with pytest.raises(BundleError, match="metadata.json"):
        ModelRegistry.from_directory(tmp_path / "models")


def test_missing_models_folder_is_loud(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        ModelRegistry.from_directory(tmp_path / "nowhere")


def test_hidden_half_written_bundles_are_skipped(make_bundle: MakeBundle) -> None:
    root = make_bundle("good")
    (root.parent / ".good.tmp-123").mkdir()  # what train_demo leaves while it writes
    assert [m.model_id for m in ModelRegistry.from_directory(root.parent, device="cpu").models] == ["good"]


def test_duplicate_model_ids_are_loud(make_bundle: MakeBundle) -> None:
    make_bundle("one", metadata=valid_metadata("same"))
    root = make_bundle("two", metadata=valid_metadata("same"))
    with pytest.raises(BundleError, match="also used"):
        ModelRegistry.from_directory(root.parent, device="cpu")


def test_routing_and_lookup(make_bundle: MakeBundle) -> None:
    make_bundle("chest")
    ct = valid_metadata("ct-model")
    ct["clinic"]["routing"] = {"modalities": ["CT"], "body_parts": ["CHEST"], "view_positions": []}
    root = make_bundle("ct-model", metadata=ct)
    registry = ModelRegistry.from_directory(root.parent, device="cpu")

    def ids(*args: str) -> list[str]:
        return [m.model_id for m in registry.select(*args)]

    assert ids("CR", "CHEST", "PA") == ["chest"]
    assert ids("dx", "chest", "ap") == ["chest"]
    assert ids("CR") == ["chest"]  # no body part / view in the header: the modality decides
    assert ids("CR", "", "PA") == ["chest"]
    assert ids("CR", "CHEST", "LL") == []
    assert ids("CR", "ABDOMEN", "PA") == []
    assert ids("MR", "CHEST") == []
    assert ids("CT", "CHEST", "AXIAL") == ["ct-model"]
    with pytest.raises(ModelNotFoundError):
        registry.get("nope")
    with pytest.raises(KeyError):
        registry.get("nope")


def test_the_order_reason_for_exam_routes_models(make_bundle: MakeBundle) -> None:
    """DESIGN.md §7: the registry maps studies to models by modality, body part, view and order reason."""
    make_bundle("chest")  # no reasons: the order does not matter to it
    pneumonia = valid_metadata("pneumonia-model")
    pneumonia["clinic"]["routing"]["reasons"] = ["J18.9", "pneumonia", "Consolidation"]
    root = make_bundle("pneumonia-model", metadata=pneumonia)
    registry = ModelRegistry.from_directory(root.parent, device="cpu")

    def ids(reason: str) -> list[str]:
        return sorted(m.model_id for m in registry.select("CR", "CHEST", "PA", reason=reason))

    assert ids("j18.9|") == ["chest", "pneumonia-model"]  # the code
    assert ids("|r/o pneumonia, fever") == ["chest", "pneumonia-model"]  # a term in the text
    assert ids("s22.3|rib fracture after a fall") == ["chest"]  # an order that gives another reason
    assert ids("") == ["chest", "pneumonia-model"]  # no order: image rules alone, never skipped


def test_bad_reasons_name_metadata_json(make_bundle: MakeBundle) -> None:
    meta = valid_metadata("m")
    meta["clinic"]["routing"]["reasons"] = "pneumonia"
    with pytest.raises(BundleError, match=r"metadata\.json.*reasons"):
        ModelRegistry.from_directory(make_bundle("m", metadata=meta).parent, device="cpu")


def test_metadata_is_plain_json_not_parsed_as_config(make_bundle: MakeBundle) -> None:
    metadata = valid_metadata("test-bundle")
    metadata["authors"] = "someone@example.org"  # '@' inside metadata text is data, not a reference
    root = make_bundle(metadata=metadata)
    assert read_bundle(root).metadata["authors"] == "someone@example.org"
    assert json.loads((root / "configs" / "metadata.json").read_text())["name"] == "Test model"


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_bundle_predicts_without_heatmaps(make_bundle: MakeBundle) -> None:
    import numpy as np
    import torch
    from monai.networks.nets.densenet import DenseNet121

    from inference.preprocess import preprocess
    from inference.types import ImageInput

    root = make_bundle("scripted", weights=False)
    (root / "models").mkdir()
    torch.manual_seed(0)
    net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2).eval()
    torch.jit.trace(net, torch.zeros(1, 1, 64, 64)).save(str(root / "models" / "model.ts"))  # type: ignore[no-untyped-call]
    spec = read_bundle(root)
    assert spec.weights_format == "torchscript"
    model = ModelRegistry.from_directory(root.parent, device="cpu").get("scripted")
    pixels = np.random.default_rng(0).random((80, 90), dtype=np.float32)
    result = model.predict(ImageInput(pixels=pixels))
    assert [f.heatmap for f in result.findings] == [None, None]
    with torch.inference_mode():
        expected = torch.sigmoid(net(torch.from_numpy(preprocess(pixels, spec.preprocessing))[None]))[0]
    for f, p in zip(result.findings, expected.tolist(), strict=True):
        assert f.probability == pytest.approx(p, abs=1e-5)
