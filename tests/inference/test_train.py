"""train_demo on a tiny configuration: a valid, loadable bundle, written atomically, reproducibly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from inference.demo.train import (
    DEMO_MODEL_ID,
    DEMO_MODEL_NAME,
    DEMO_MODEL_VERSION,
    RECIPE,
    TrainConfig,
    demo_bundle_exists,
    train_demo,
)
from inference.registry import ModelRegistry

TINY = TrainConfig(n_train=28, n_val=14, phantom_size=128, epochs=1, batch_size=14)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, int, int]]]:
    calls: list[tuple[str, int, int]] = []
    models_dir = tmp_path_factory.mktemp("models")
    path = train_demo(models_dir, seed=3, progress=lambda *a: calls.append(a), config=TINY)
    return path, calls


def test_bundle_layout_and_loading(tiny_bundle: tuple[Path, list[tuple[str, int, int]]]) -> None:
    path, _ = tiny_bundle
    assert path.name == DEMO_MODEL_ID
    assert {p.name for p in path.parent.iterdir()} == {DEMO_MODEL_ID}  # no temporary folder left over
    for rel in ("configs/metadata.json", "configs/inference.json", "models/model.pt"):
        assert (path / rel).is_file(), rel
    assert demo_bundle_exists(path.parent)
    model = ModelRegistry.from_directory(path.parent, device="cpu").get(DEMO_MODEL_ID)
    assert (model.name, model.version, model.is_synthetic) == (DEMO_MODEL_NAME, DEMO_MODEL_VERSION, True)
    meta = json.loads((path / "configs" / "metadata.json").read_text())
    training = meta["clinic"]["training"]
    assert (training["seed"], training["n_train"], training["n_validation"]) == (3, 28, 14)
    assert training["recipe"] == RECIPE
    assert all("validation_auc" in f for f in meta["clinic"]["findings"])


def test_progress_reports_every_stage(tiny_bundle: tuple[Path, list[tuple[str, int, int]]]) -> None:
    _, calls = tiny_bundle
    stages = [c[0] for c in calls]
    assert stages.index("phantoms") < stages.index("train") < stages.index("validate")
    for stage in ("phantoms", "train", "validate"):
        done_total = [(d, t) for s, d, t in calls if s == stage]
        assert done_total[-1][0] == done_total[-1][1]
        assert [d for d, _ in done_total] == sorted(d for d, _ in done_total)


def test_same_seed_same_weights(tiny_bundle: tuple[Path, list[tuple[str, int, int]]], tmp_path: Path) -> None:
    path, _ = tiny_bundle
    again = train_demo(tmp_path, seed=3, config=TINY)
    a = torch.load(path / "models" / "model.pt", weights_only=True)
    b = torch.load(again / "models" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_retraining_replaces_the_bundle(tmp_path: Path) -> None:
    first = train_demo(tmp_path, seed=4, config=TINY)
    stale = first / "models" / "extra.txt"
    stale.write_text("from the previous bundle")
    second = train_demo(tmp_path, seed=4, config=TINY)
    assert second == first and not stale.exists()
    assert {p.name for p in tmp_path.iterdir()} == {DEMO_MODEL_ID}


def test_stale_recipe_is_not_a_demo_bundle(tmp_path: Path) -> None:
    assert not demo_bundle_exists(tmp_path)
    path = train_demo(tmp_path, seed=4, config=TINY)
    meta_path = path / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["clinic"]["training"]["recipe"] = "older"
    meta_path.write_text(json.dumps(meta))
    assert not demo_bundle_exists(tmp_path)
