"""Fixtures of the inference tests: the trained demo registry, phantoms written as real DICOM files,
and small hand-written bundles for the parser."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from inference.demo.phantoms import Phantom
from inference.registry import ModelRegistry
from tests.inference.helpers import VALID_INFERENCE, phantom_dataset, valid_metadata

WritePhantom = Callable[..., Path]


@pytest.fixture(scope="session")
def demo_registry(demo_models_dir: Path) -> ModelRegistry:
    """The registry over the trained demo bundle(s), on the CPU (loaded once per session)."""
    return ModelRegistry.from_directory(demo_models_dir, device="cpu")


@pytest.fixture
def write_phantom(tmp_path: Path) -> WritePhantom:
    """``write_phantom(phantom, name, **options)`` → path of a DICOM file on disk (see phantom_dataset)."""

    def write(phantom: Phantom, name: str = "phantom.dcm", **options: Any) -> Path:
        path = tmp_path / name
        phantom_dataset(phantom, **options).save_as(path, enforce_file_format=True)
        return path

    return write


# --- hand-written bundles for the parser -------------------------------------------------------


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dict of an untrained DenseNet121 (2 outputs), saved once per session."""
    from monai.networks.nets.densenet import DenseNet121

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(DenseNet121(spatial_dims=2, in_channels=1, out_channels=2).state_dict(), path)
    return path


MakeBundle = Callable[..., Path]


@pytest.fixture
def make_bundle(tmp_path: Path, random_weights: Path) -> MakeBundle:
    """``make_bundle(name, inference=..., metadata=..., weights=True)`` → a bundle folder under
    ``tmp_path / "models"``; ``inference``/``metadata`` may be dicts or raw strings."""

    def make(
        name: str = "test-bundle",
        *,
        inference: dict[str, Any] | str | None = None,
        metadata: dict[str, Any] | str | None = None,
        weights: bool | bytes = True,
    ) -> Path:
        root = tmp_path / "models" / name
        (root / "configs").mkdir(parents=True)
        inf = VALID_INFERENCE if inference is None else inference
        meta = valid_metadata(name) if metadata is None else metadata
        (root / "configs" / "inference.json").write_text(inf if isinstance(inf, str) else json.dumps(inf))
        (root / "configs" / "metadata.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
        if weights is not False:
            (root / "models").mkdir()
            if isinstance(weights, bytes):
                (root / "models" / "model.pt").write_bytes(weights)
            else:
                shutil.copyfile(random_weights, root / "models" / "model.pt")
        return root

    return make
