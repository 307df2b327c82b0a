"""The model registry: every bundle in the models folder, loaded once, routed by DICOM attributes.

Explicit and loud (STYLE.md, Inference): a bundle that cannot be loaded raises
:class:`~inference.errors.BundleError` naming the file and the reason; lookups never return ``None``.
Build one registry per worker process (``import monai`` alone costs ~2.5 s, DESIGN.md §10).

Two kinds of model: :class:`LoadedModel` (2D classification, one instance, ``predict``) and
:class:`~inference.segmentation.SegmentationModel` (3D segmentation, a whole series,
``predict_volume``); ``model.is_volumetric`` tells them apart and the registry routes both.
"""

from __future__ import annotations

import importlib
import inspect
import threading
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
from torch import nn

from inference.bundle import BundleSpec, FindingSpec, PreprocessSpec, Routing, read_bundle
from inference.device import resolve_device
from inference.errors import BundleError, InferenceError
from inference.explain import find_layer, forward_with_gradcam
from inference.preprocess import preprocess
from inference.types import Finding, ImageInput, ModelResult

if TYPE_CHECKING:
    from inference.segmentation import SegmentationModel

__all__ = [
    "AnyModel",
    "BundleError",
    "BundleModel",
    "LoadedModel",
    "ModelNotFoundError",
    "ModelRegistry",
    "load_model",
]


class ModelNotFoundError(InferenceError, KeyError):
    """No model with this id in the registry."""


class BundleModel:
    """What every loaded bundle shows the worker and the results: its identity (with the
    synthetic-model label), its routing and findings, and the device it runs on."""

    #: False: reads one instance; True: reads a whole series (the worker plans it per series).
    is_volumetric = False

    def __init__(self, spec: BundleSpec, device: str | torch.device = "auto") -> None:
        self.spec = spec
        self.model_id = spec.model_id
        self.name = spec.name
        self.version = spec.version
        self.is_synthetic = spec.is_synthetic
        self.disclaimer = spec.disclaimer
        self.device = resolve_device(device)

    @property
    def routing(self) -> Routing:
        return self.spec.routing

    @property
    def findings(self) -> tuple[FindingSpec, ...]:
        return self.spec.findings

    def accepts(self, modality: str, body_part: str = "", view_position: str = "", reason: str = "") -> bool:
        return self.spec.routing.accepts(modality, body_part, view_position, reason)

    def result(self, **read: Any) -> ModelResult:
        """A :class:`ModelResult` of this model: its identity, synthetic label and device, and *read*
        (findings, timing, the instance, measurements...)."""
        return ModelResult(
            model_id=self.model_id,
            model_name=self.name,
            model_version=self.version,
            is_synthetic=self.is_synthetic,
            disclaimer=self.disclaimer,
            device=str(self.device),
            **read,
        )


class LoadedModel(BundleModel):
    """One 2D classification bundle's network, loaded once onto its device."""

    def __init__(self, spec: BundleSpec, device: str | torch.device = "auto") -> None:
        if spec.preprocessing is None:
            raise BundleError(spec.root / "configs" / "metadata.json", "not a classification bundle")
        super().__init__(spec, device)
        self._preprocessing: PreprocessSpec = spec.preprocessing
        # channels_last: 58 vs 75 ms per 224² DenseNet121 image on 2 CPU cores (DESIGN.md §10).
        self._memory_format = torch.channels_last
        self._net = load_network(spec, self.device, self._memory_format)
        self._cam_layer: nn.Module | None = None
        if spec.gradcam_layer and spec.weights_format == "state_dict":
            try:
                self._cam_layer = find_layer(self._net, spec.gradcam_layer)
            except KeyError as exc:
                raise BundleError(spec.root / "configs" / "inference.json", str(exc)) from exc
        self._lock = threading.Lock()  # hooks and autograd state are per-module: one call at a time

    def predict(self, image: ImageInput, explain: bool = True) -> ModelResult:
        """Probabilities for every finding; with ``explain`` a Grad-CAM heatmap for each.

        Heatmaps need the model to be a state-dict bundle with an ``explain`` layer; for a TorchScript
        bundle they are ``None``.
        """
        pixels = np.asarray(image.pixels)
        if pixels.ndim != 2:
            raise ValueError(f"ImageInput.pixels must be H×W, got shape {pixels.shape}")
        start = time.perf_counter()
        x = torch.from_numpy(preprocess(pixels, self._preprocessing))[None]
        x = x.to(self.device).contiguous(memory_format=self._memory_format)
        indices = [f.output_index for f in self.spec.findings]
        heatmaps: list[np.ndarray | None] = [None] * len(indices)
        with self._lock:
            if explain and self._cam_layer is not None:
                logits, maps = forward_with_gradcam(self._net, x, self._cam_layer, indices)
                heatmaps = list(maps)
            else:
                with torch.inference_mode():
                    logits = self._net(x)
            probs = torch.sigmoid(logits.float())[0].cpu().numpy()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        findings = tuple(
            Finding(
                code=f.code,
                label=f.label,
                probability=float(probs[f.output_index]),
                threshold=f.threshold,
                urgency=f.urgency,
                heatmap=heatmaps[n],
            )
            for n, f in enumerate(self.spec.findings)
        )
        return self.result(
            inference_ms=elapsed_ms, findings=findings, sop_instance_uid=image.sop_instance_uid
        )

    def __repr__(self) -> str:
        return (
            f"LoadedModel({self.model_id!r}, {self.name!r}, version={self.version!r}, device={self.device})"
        )


#: Either kind of model the registry holds.
AnyModel = Union[LoadedModel, "SegmentationModel"]


def load_model(spec: BundleSpec, device: str | torch.device = "auto") -> AnyModel:
    """The model class that fits the bundle's task, loaded onto *device*."""
    if spec.is_volumetric:
        from inference.segmentation import SegmentationModel

        return SegmentationModel(spec, device)
    return LoadedModel(spec, device)


class ModelRegistry:
    """All loaded models, with routing by modality, body part and view position."""

    def __init__(self, models: Iterable[AnyModel]) -> None:
        self._models: dict[str, AnyModel] = {}
        for model in models:
            if model.model_id in self._models:
                other = self._models[model.model_id].spec.root
                raise BundleError(
                    model.spec.root / "configs" / "metadata.json",
                    f"model id {model.model_id!r} is also used by {other}",
                )
            self._models[model.model_id] = model

    @classmethod
    def from_directory(cls, models_dir: Path, device: str = "auto") -> ModelRegistry:
        """Load every bundle folder under ``models_dir`` (dot- and underscore-folders are skipped:
        they are half-written bundles of :func:`inference.demo.train.train_demo`)."""
        models_dir = Path(models_dir)
        if not models_dir.is_dir():
            raise BundleError(models_dir, "the models folder does not exist")
        bundles = sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
        return cls(load_model(read_bundle(p), device) for p in bundles)

    @property
    def models(self) -> list[AnyModel]:
        return list(self._models.values())

    def select(
        self, modality: str, body_part: str = "", view_position: str = "", reason: str = ""
    ) -> list[AnyModel]:
        """The models that read this kind of image (and order reason, ``code|text``), by their
        bundles' routing rules."""
        return [m for m in self._models.values() if m.accepts(modality, body_part, view_position, reason)]

    def get(self, model_id: str) -> AnyModel:
        try:
            return self._models[model_id]
        except KeyError:
            raise ModelNotFoundError(f"no model {model_id!r}; loaded: {sorted(self._models)}") from None


def build_network(spec: BundleSpec) -> nn.Module:
    """Instantiate the allowlisted network with its literal arguments (never downloads weights)."""
    from inference.bundle import NETWORKS

    module_name, attr = NETWORKS[spec.network_target]
    cls = getattr(importlib.import_module(module_name), attr)
    kwargs = dict(spec.network_kwargs)
    if "pretrained" in inspect.signature(cls).parameters:
        kwargs["pretrained"] = False
    try:
        net = cls(**kwargs)
    except (TypeError, ValueError, KeyError, AssertionError) as exc:
        raise BundleError(spec.root / "configs" / "inference.json", f"network_def: {exc}") from exc
    if not isinstance(net, nn.Module):
        raise BundleError(spec.root / "configs" / "inference.json", "network_def is not a torch module")
    return net


def load_network(spec: BundleSpec, device: torch.device, memory_format: torch.memory_format) -> nn.Module:
    if spec.weights_format == "torchscript":
        try:
            with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; model-zoo bundles ship it
                warnings.simplefilter("ignore", DeprecationWarning)
                net: nn.Module = torch.jit.load(str(spec.weights), map_location=device)  # type: ignore[no-untyped-call]
        except (RuntimeError, ValueError, OSError) as exc:
            raise BundleError(spec.weights, f"not a loadable TorchScript file ({exc})") from exc
    else:
        net = build_network(spec)
        try:
            state = torch.load(spec.weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises pickle, zip and runtime errors for a bad file
            raise BundleError(
                spec.weights, f"not a loadable state dict ({type(exc).__name__}: {exc})"
            ) from exc
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise BundleError(spec.weights, "does not hold a state dict")
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise BundleError(spec.weights, f"weights do not fit {spec.network_target}: {exc}") from exc
        net = net.to(device=device, memory_format=memory_format)  # type: ignore[call-overload]
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net
