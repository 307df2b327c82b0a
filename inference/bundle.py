"""Read a MONAI bundle folder without executing anything from it.

Layout (the MONAI model zoo's): ``configs/metadata.json``, ``configs/inference.json`` and
``models/model.pt`` (a state dict, loaded with ``weights_only=True``) or ``models/model.ts``
(TorchScript). MONAI's ``ConfigParser`` would ``eval`` ``$``-expressions, resolve ``@`` references
and ``%`` macros and import any ``_target_``; here the configs are plain JSON checked against an
allowlist: a ``_target_`` must be one of :data:`NETWORKS` / :data:`TRANSFORMS` / :data:`EXPLAINERS`,
its arguments must be literals, and any ``$``, ``@`` or ``%`` string is refused with a
:class:`~inference.errors.BundleError` naming the file. Nothing is ever ``eval``-ed.

Our own routing, labels, operating thresholds, urgency and disclaimer live in ``metadata.json``
under the ``"clinic"`` key, next to the standard MONAI metadata fields.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.errors import BundleError
from inference.types import SYNTHETIC_DISCLAIMER

METADATA = Path("configs") / "metadata.json"
INFERENCE = Path("configs") / "inference.json"
WEIGHTS_PT = Path("models") / "model.pt"
WEIGHTS_TS = Path("models") / "model.ts"

#: Networks a bundle may name: ``_target_`` → (module, attribute). Short names as MONAI accepts them.
NETWORKS: dict[str, tuple[str, str]] = {}
for _name in ("DenseNet121", "DenseNet169", "DenseNet201", "ResNet", "SEResNet50", "EfficientNetBN"):
    NETWORKS[f"monai.networks.nets.{_name}"] = ("monai.networks.nets", _name)
    NETWORKS[_name] = ("monai.networks.nets", _name)

#: Preprocessing steps a bundle may name; each maps to a pure function in :mod:`inference.preprocess`.
TRANSFORMS = {
    "Compose": "compose",
    "monai.transforms.Compose": "compose",
    "Resized": "resize",
    "monai.transforms.Resized": "resize",
    "NormalizeIntensityd": "zscore",
    "monai.transforms.NormalizeIntensityd": "zscore",
    "ScaleIntensityd": "scale",
    "monai.transforms.ScaleIntensityd": "scale",
    "Activations": "activations",
    "monai.transforms.Activations": "activations",
}
EXPLAINERS = {"GradCAM": "gradcam", "monai.visualize.GradCAM": "gradcam"}

_ALLOWED_TARGETS = set(NETWORKS) | set(TRANSFORMS) | set(EXPLAINERS)
#: Special keys of MONAI's config syntax that are plain data; ``_requires_`` and ``_mode_`` are not.
_DATA_SPECIAL_KEYS = {"_target_", "_desc_", "_disabled_"}
_RESIZE_MODES = {"area", "bilinear"}


@dataclass(frozen=True)
class Routing:
    """Which images a model reads (DICOM Modality, Body Part Examined, View Position)."""

    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]
    view_positions: tuple[str, ...]

    def accepts(self, modality: str, body_part: str = "", view_position: str = "") -> bool:
        """An empty body part or view is accepted when the modality matches (many CRs lack them)."""
        modality, body_part, view = (v.strip().upper() for v in (modality, body_part, view_position))
        if modality not in self.modalities:
            return False
        if body_part and self.body_parts and body_part not in self.body_parts:
            return False
        return not (view and self.view_positions and view not in self.view_positions)


@dataclass(frozen=True)
class FindingSpec:
    code: str
    label: str
    output_index: int
    threshold: float
    urgency: int


@dataclass(frozen=True)
class PreprocessSpec:
    spatial_size: tuple[int, int]
    resize_mode: str = "bilinear"
    normalize: str = "zscore"  # "zscore" | "scale" | "none"


@dataclass(frozen=True)
class BundleSpec:
    root: Path
    model_id: str
    name: str
    version: str
    is_synthetic: bool
    disclaimer: str
    routing: Routing
    findings: tuple[FindingSpec, ...]
    network_target: str
    network_kwargs: dict[str, Any]
    preprocessing: PreprocessSpec
    gradcam_layer: str | None
    weights: Path
    metadata: dict[str, Any]

    @property
    def weights_format(self) -> str:
        return "torchscript" if self.weights.suffix == ".ts" else "state_dict"


def read_bundle(root: Path) -> BundleSpec:
    """Parse and check one bundle folder; every problem is a :class:`BundleError` naming the file."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(root, "not a bundle folder")
    meta_path, inf_path = root / METADATA, root / INFERENCE
    metadata = _load_json(meta_path)
    config = _load_json(inf_path)
    _check_config(config, inf_path)
    clinic = _get(metadata, "clinic", dict, meta_path, "the 'clinic' section (routing, findings)")
    network_target, network_kwargs = _network(config, inf_path)
    findings = _findings(clinic, meta_path, network_kwargs.get("out_channels"))
    is_synthetic = _get(clinic, "is_synthetic", bool, meta_path, "clinic.is_synthetic")
    disclaimer = str(clinic.get("disclaimer", SYNTHETIC_DISCLAIMER if is_synthetic else ""))
    if is_synthetic and disclaimer != SYNTHETIC_DISCLAIMER:
        raise BundleError(meta_path, f"a synthetic model must carry the disclaimer {SYNTHETIC_DISCLAIMER!r}")
    return BundleSpec(
        root=root,
        model_id=_get(clinic, "model_id", str, meta_path, "clinic.model_id"),
        name=_get(metadata, "name", str, meta_path, "name"),
        version=_get(metadata, "version", str, meta_path, "version"),
        is_synthetic=is_synthetic,
        disclaimer=disclaimer,
        routing=_routing(clinic, meta_path),
        findings=findings,
        network_target=network_target,
        network_kwargs=network_kwargs,
        preprocessing=_preprocessing(config, inf_path),
        gradcam_layer=_gradcam_layer(config, inf_path),
        weights=_weights(root),
        metadata=metadata,
    )


def _load_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise BundleError(path, "file is missing") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(path, f"cannot be read ({exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(path, f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise BundleError(path, "the top level must be a JSON object")
    return data


def _check_config(node: Any, path: Path, where: str = "") -> None:
    """Refuse everything of MONAI's config syntax that would run code or resolve references."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}.{key}" if where else str(key)
            if key.startswith("_") and key.endswith("_") and key not in _DATA_SPECIAL_KEYS:
                raise BundleError(path, f"{here}: the special key {key!r} is not allowed")
            if key == "_target_":
                if not isinstance(value, str) or value not in _ALLOWED_TARGETS:
                    raise BundleError(path, f"{here}: _target_ {value!r} is not on the allowlist")
            _check_config(value, path, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_config(value, path, f"{where}[{i}]")
    elif isinstance(node, str):
        if node.startswith("$"):
            raise BundleError(path, f"{where}: expressions ('$...') are never evaluated: {node[:60]!r}")
        if node.startswith("@"):
            raise BundleError(path, f"{where}: references ('@...') are not allowed: {node[:60]!r}")
        if node.startswith("%"):
            raise BundleError(path, f"{where}: macros ('%...') are not allowed: {node[:60]!r}")
    elif isinstance(node, float) and not math.isfinite(node):
        raise BundleError(path, f"{where}: non-finite number")


def _is_literal(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list):
        return all(_is_literal(v) for v in value)
    return False


def _network(config: dict[str, Any], path: Path) -> tuple[str, dict[str, Any]]:
    net = _get(config, "network_def", dict, path, "network_def")
    target = net.get("_target_")
    if target not in NETWORKS:
        raise BundleError(path, f"network_def: _target_ {target!r} is not an allowlisted network")
    kwargs = {k: v for k, v in net.items() if k not in _DATA_SPECIAL_KEYS}
    for key, value in kwargs.items():
        if not _is_literal(value):
            raise BundleError(path, f"network_def.{key}: only literal arguments are allowed")
    if kwargs.get("pretrained"):
        raise BundleError(path, "network_def.pretrained: weights are never downloaded; ship them in models/")
    return str(target), kwargs


def _preprocessing(config: dict[str, Any], path: Path) -> PreprocessSpec:
    pre = _get(config, "preprocessing", dict, path, "preprocessing")
    steps = pre.get("transforms", []) if TRANSFORMS.get(pre.get("_target_", "")) == "compose" else [pre]
    if not isinstance(steps, list):
        raise BundleError(path, "preprocessing.transforms must be a list")
    size: tuple[int, int] | None = None
    mode, normalize = "bilinear", "none"
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            raise BundleError(path, f"preprocessing.transforms[{i}] must be an object")
        kind = TRANSFORMS.get(step.get("_target_", ""))
        if kind == "resize":
            raw = step.get("spatial_size")
            if not (
                isinstance(raw, list) and len(raw) == 2 and all(isinstance(v, int) and v > 0 for v in raw)
            ):
                raise BundleError(
                    path, f"preprocessing.transforms[{i}].spatial_size must be two positive ints"
                )
            size = (raw[0], raw[1])
            mode = str(step.get("mode", "bilinear"))
            if mode not in _RESIZE_MODES:
                raise BundleError(
                    path, f"preprocessing.transforms[{i}].mode must be one of {sorted(_RESIZE_MODES)}"
                )
        elif kind in ("zscore", "scale"):
            normalize = str(kind)
        else:
            raise BundleError(
                path, f"preprocessing.transforms[{i}]: {step.get('_target_')!r} is not a preprocessing step"
            )
    if size is None:
        raise BundleError(path, "preprocessing has no Resized step (the model's spatial size)")
    return PreprocessSpec(spatial_size=size, resize_mode=mode, normalize=normalize)


def _gradcam_layer(config: dict[str, Any], path: Path) -> str | None:
    explain = config.get("explain")
    if explain is None:
        return None
    if not isinstance(explain, dict) or EXPLAINERS.get(explain.get("_target_", "")) != "gradcam":
        raise BundleError(path, "explain must be a GradCAM object")
    layer = explain.get("target_layers")
    if not isinstance(layer, str) or not layer:
        raise BundleError(path, "explain.target_layers must name one layer")
    return layer


def _routing(clinic: dict[str, Any], path: Path) -> Routing:
    routing = _get(clinic, "routing", dict, path, "clinic.routing")

    def upper_list(key: str, required: bool) -> tuple[str, ...]:
        value = routing.get(key, [])
        if (
            not isinstance(value, list)
            or not all(isinstance(v, str) for v in value)
            or (required and not value)
        ):
            raise BundleError(
                path, f"clinic.routing.{key} must be a {'non-empty ' if required else ''}list of strings"
            )
        return tuple(v.strip().upper() for v in value)

    return Routing(
        upper_list("modalities", True), upper_list("body_parts", False), upper_list("view_positions", False)
    )


def _findings(clinic: dict[str, Any], path: Path, out_channels: Any) -> tuple[FindingSpec, ...]:
    raw = _get(clinic, "findings", list, path, "clinic.findings")
    if not raw:
        raise BundleError(path, "clinic.findings is empty")
    out: list[FindingSpec] = []
    for i, item in enumerate(raw):
        where = f"clinic.findings[{i}]"
        if not isinstance(item, dict):
            raise BundleError(path, f"{where} must be an object")
        try:
            spec = FindingSpec(
                code=str(item["code"]),
                label=str(item["label"]),
                output_index=int(item["output_index"]),
                threshold=float(item["threshold"]),
                urgency=int(item["urgency"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(
                path, f"{where}: needs code, label, output_index, threshold, urgency ({exc})"
            ) from exc
        if not 0.0 <= spec.threshold <= 1.0:
            raise BundleError(path, f"{where}.threshold must be in [0, 1]")
        if spec.urgency not in (0, 1, 2):
            raise BundleError(path, f"{where}.urgency must be 0 (routine), 1 (urgent) or 2 (stat)")
        if isinstance(out_channels, int) and not 0 <= spec.output_index < out_channels:
            raise BundleError(
                path, f"{where}.output_index {spec.output_index} is not an output of the network"
            )
        out.append(spec)
    if len({f.code for f in out}) != len(out) or len({f.output_index for f in out}) != len(out):
        raise BundleError(path, "clinic.findings: codes and output indices must be unique")
    return tuple(out)


def _weights(root: Path) -> Path:
    for rel in (WEIGHTS_PT, WEIGHTS_TS):
        if (root / rel).is_file():
            return root / rel
    raise BundleError(root / WEIGHTS_PT, "weight file is missing (models/model.pt or models/model.ts)")


def _get(obj: dict[str, Any], key: str, kind: type, path: Path, what: str) -> Any:
    value = obj.get(key)
    if value is None:
        raise BundleError(path, f"{what} is missing")
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise BundleError(path, f"{what} must be a {kind.__name__}")
    return value
