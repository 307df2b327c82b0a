"""Read a MONAI bundle folder without executing anything from it.

Layout (the MONAI model zoo's): ``configs/metadata.json``, ``configs/inference.json`` and
``models/model.pt`` (a state dict, loaded with ``weights_only=True``) or ``models/model.ts``
(TorchScript). MONAI's ``ConfigParser`` would ``eval`` ``$``-expressions, resolve ``@`` references
and ``%`` macros and import any ``_target_``; here the configs are plain JSON checked against an
allowlist: a ``_target_`` must be one of :data:`NETWORKS` / :data:`TRANSFORMS` / :data:`EXPLAINERS`,
its arguments must be literals, and any ``$``, ``@`` or ``%`` string is refused with a
:class:`~inference.errors.BundleError` naming the file. Nothing is ever ``eval``-ed.

Our own routing, labels, operating thresholds, urgency and disclaimer live in ``metadata.json``
under the ``"clinic"`` key, next to the standard MONAI metadata fields. ``clinic.task`` is
``"classification"`` (2D, the default) or ``"segmentation"`` (3D): a segmentation bundle's
``inference.json`` has a ``Spacingd`` (+ ``ScaleIntensityRanged``) preprocessing, a
``sliding_window`` section (MONAI's ``SlidingWindowInferer`` arguments) and a postprocessing of
``Activationsd`` → ``AsDiscreted(threshold)`` → ``RemoveSmallObjectsd(min_size, by_measure)``;
see :class:`VolumeSpec`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import uuid
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
for _name in (
    "DenseNet121",
    "DenseNet169",
    "DenseNet201",
    "ResNet",
    "SEResNet50",
    "EfficientNetBN",
    # 3D segmentation networks
    "UNet",
    "BasicUNet",
    "SegResNet",
):
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
    # segmentation (3D): working spacing, HU window, sigmoid/softmax, threshold, small objects
    "Spacingd": "spacing",
    "monai.transforms.Spacingd": "spacing",
    "ScaleIntensityRanged": "scale_range",
    "monai.transforms.ScaleIntensityRanged": "scale_range",
    "Activationsd": "activations",
    "monai.transforms.Activationsd": "activations",
    "AsDiscreted": "as_discrete",
    "monai.transforms.AsDiscreted": "as_discrete",
    "RemoveSmallObjectsd": "remove_small_objects",
    "monai.transforms.RemoveSmallObjectsd": "remove_small_objects",
}
EXPLAINERS = {"GradCAM": "gradcam", "monai.visualize.GradCAM": "gradcam"}
INFERERS = {"SlidingWindowInferer": "sliding_window", "monai.inferers.SlidingWindowInferer": "sliding_window"}

_ALLOWED_TARGETS = set(NETWORKS) | set(TRANSFORMS) | set(EXPLAINERS) | set(INFERERS)
#: Special keys of MONAI's config syntax that are plain data; ``_requires_`` and ``_mode_`` are not.
_DATA_SPECIAL_KEYS = {"_target_", "_desc_", "_disabled_"}
_RESIZE_MODES = {"area", "bilinear"}
TASKS = ("classification", "segmentation")
_BLEND_MODES = {"constant", "gaussian"}


@dataclass(frozen=True)
class Routing:
    """Which studies a model reads: DICOM Modality, Body Part Examined, View Position, and the
    imaging order's reason for exam (DESIGN.md §7).

    ``reasons`` are lower-case terms: a code (e.g. ICD-10 ``j18.9``) matches the order's reason
    code exactly, any other term matches when it occurs in the reason text ("nodule" in "follow-up
    of a lung nodule"). A model with reasons reads a study whose order gives a reason only when one
    of them matches; a study without an order or reason is read on the image rules alone (AI must
    not skip a study because its order is missing). A model without reasons ignores the order.
    """

    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]
    view_positions: tuple[str, ...]
    reasons: tuple[str, ...] = ()

    def accepts(self, modality: str, body_part: str = "", view_position: str = "", reason: str = "") -> bool:
        """An empty body part or view is accepted when the modality matches (many CRs lack them)."""
        modality, body_part, view = (v.strip().upper() for v in (modality, body_part, view_position))
        if modality not in self.modalities:
            return False
        if body_part and self.body_parts and body_part not in self.body_parts:
            return False
        if view and self.view_positions and view not in self.view_positions:
            return False
        return self.matches_reason(reason)

    def matches_reason(self, reason: str) -> bool:
        """*reason* is the order's reason code and text, joined by "|" (``code|text``)."""
        reason = reason.strip().lower()
        if not self.reasons or not reason.strip("|"):
            return True
        code, _, text = reason.partition("|")
        return any(term == code.strip() or term in text or term in code for term in self.reasons)


@dataclass(frozen=True)
class FindingSpec:
    code: str
    label: str
    output_index: int
    threshold: float
    urgency: int
    #: Segmentation only: the urgency applies when the largest component is at least this wide
    #: (equivalent-sphere diameter, mm); smaller positives are routine. ``None``: always.
    urgent_from_diameter_mm: float | None = None


@dataclass(frozen=True)
class PreprocessSpec:
    spatial_size: tuple[int, int]
    resize_mode: str = "bilinear"
    normalize: str = "zscore"  # "zscore" | "scale" | "none"


@dataclass(frozen=True)
class SlidingWindowSpec:
    """MONAI ``sliding_window_inference`` arguments; sizes are (z, y, x) voxels of the working grid."""

    roi_size: tuple[int, int, int]
    sw_batch_size: int
    overlap: float
    mode: str  # "gaussian" | "constant"


@dataclass(frozen=True)
class LungFieldSpec:
    """Keep a component only when ``min_fraction`` of it lies in the lung field: the air below
    ``air_below_hu`` that is not around the patient, closed by ``closing_mm`` (see
    :func:`inference.volume.lung_field_fraction`). The ``lung_field`` section of ``inference.json``:
    plain data, no ``_target_``."""

    air_below_hu: float
    closing_mm: float
    min_fraction: float


@dataclass(frozen=True)
class VolumeSpec:
    """How a segmentation bundle reads a volume and turns probabilities into components.

    ``spacing`` is the working grid's (z, y, x) in mm (``Spacingd.pixdim`` in the array's axis
    order); ``intensity`` is ``ScaleIntensityRanged``'s (a_min, a_max, b_min, b_max) or ``None``;
    ``threshold`` binarises the probability and ``min_volume_mm3`` drops smaller components
    (``RemoveSmallObjectsd`` with ``by_measure``) of the given ``connectivity`` (1 = faces,
    2 = + edges, 3 = + corners, as in scikit-image).
    """

    spacing: tuple[float, float, float]
    intensity: tuple[float, float, float, float] | None
    clip: bool
    sliding_window: SlidingWindowSpec
    activation: str  # "sigmoid" | "softmax"
    threshold: float
    min_volume_mm3: float
    connectivity: int
    lung_field: LungFieldSpec | None = None


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
    preprocessing: PreprocessSpec | None  # classification (2D) only
    gradcam_layer: str | None
    weights: Path
    metadata: dict[str, Any]
    task: str = "classification"
    volume: VolumeSpec | None = None  # segmentation (3D) only

    @property
    def is_volumetric(self) -> bool:
        """A 3D model: it reads a whole series, not one instance."""
        return self.task == "segmentation"

    @property
    def weights_format(self) -> str:
        return "torchscript" if self.weights.suffix == ".ts" else "state_dict"


def trained_by(root: Path, recipe: str) -> bool:
    """True when the bundle at *root* is complete and its metadata names the training *recipe*
    (``clinic.training.recipe``): a demo bundle written by an older recipe counts as stale."""
    try:
        meta = json.loads((root / METADATA).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    trained = meta.get("clinic", {}).get("training", {}).get("recipe") if isinstance(meta, dict) else None
    return trained == recipe and (root / INFERENCE).is_file() and (root / WEIGHTS_PT).is_file()


def replace_dir(src: Path, dst: Path) -> None:
    """Move the bundle folder *src* to *dst*; an existing *dst* is moved aside first, then removed
    (a reader sees the old bundle or the new one, never half of either)."""
    old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


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
    task = clinic.get("task", "classification")
    if task not in TASKS:
        raise BundleError(meta_path, f"clinic.task must be one of {list(TASKS)}, not {task!r}")
    findings = _findings(clinic, meta_path, network_kwargs.get("out_channels"))
    if task == "segmentation" and len(findings) != 1:
        raise BundleError(meta_path, "a segmentation bundle has exactly one finding (its foreground class)")
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
        preprocessing=_preprocessing(config, inf_path) if task == "classification" else None,
        gradcam_layer=_gradcam_layer(config, inf_path) if task == "classification" else None,
        weights=_weights(root),
        metadata=metadata,
        task=task,
        volume=_volume(config, inf_path) if task == "segmentation" else None,
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


def _steps(config: dict[str, Any], key: str, path: Path) -> list[tuple[str, dict[str, Any]]]:
    """A ``Compose`` (or single step) under *key* as (kind, arguments) pairs, kinds per TRANSFORMS."""
    node = _get(config, key, dict, path, key)
    steps = node.get("transforms", []) if TRANSFORMS.get(node.get("_target_", "")) == "compose" else [node]
    if not isinstance(steps, list):
        raise BundleError(path, f"{key}.transforms must be a list")
    out = []
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            raise BundleError(path, f"{key}.transforms[{i}] must be an object")
        kind = TRANSFORMS.get(step.get("_target_", ""))
        if kind is None:
            raise BundleError(path, f"{key}.transforms[{i}] has no allowlisted _target_")
        out.append((kind, step))
    return out


def _numbers(
    value: Any, n: int, what: str, path: Path, kind: type = float, positive: bool = True
) -> tuple[Any, ...]:
    ok = isinstance(value, list) and len(value) == n
    ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ok = ok and all((isinstance(v, int) if kind is int else True) for v in value)
    if not ok or (positive and not all(v > 0 for v in value)):
        raise BundleError(path, f"{what} must be {n} {'positive ' if positive else ''}{kind.__name__}s")
    return tuple(kind(v) for v in value)


def _volume(config: dict[str, Any], path: Path) -> VolumeSpec:
    """The segmentation sections of ``inference.json``: preprocessing, sliding_window, postprocessing."""
    spacing: tuple[float, ...] | None = None
    intensity: tuple[float, ...] | None = None
    clip = False
    for kind, step in _steps(config, "preprocessing", path):
        if kind == "spacing":
            spacing = _numbers(step.get("pixdim"), 3, "preprocessing Spacingd.pixdim", path)
            if step.get("mode", "bilinear") not in ("bilinear", "trilinear"):
                raise BundleError(path, "preprocessing Spacingd.mode must be bilinear")
        elif kind == "scale_range":
            args = [step.get(k) for k in ("a_min", "a_max", "b_min", "b_max")]
            intensity = _numbers(
                args, 4, "ScaleIntensityRanged a_min/a_max/b_min/b_max", path, positive=False
            )
            if intensity[0] == intensity[1]:
                raise BundleError(path, "ScaleIntensityRanged: a_min and a_max must differ")
            clip = bool(step.get("clip", False))
        else:
            raise BundleError(path, f"preprocessing: {step.get('_target_')!r} is not a segmentation step")
    if spacing is None:
        raise BundleError(path, "preprocessing has no Spacingd step (the model's working spacing)")
    sw = _get(config, "sliding_window", dict, path, "sliding_window (roi_size, sw_batch_size, overlap, mode)")
    if "_target_" in sw and INFERERS.get(sw["_target_"]) != "sliding_window":
        raise BundleError(path, "sliding_window._target_ must be SlidingWindowInferer")
    roi = _numbers(sw.get("roi_size"), 3, "sliding_window.roi_size", path, kind=int)
    batch, overlap, mode = sw.get("sw_batch_size", 1), sw.get("overlap", 0.25), sw.get("mode", "constant")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise BundleError(path, "sliding_window.sw_batch_size must be a positive int")
    if not isinstance(overlap, int | float) or not 0.0 <= overlap < 1.0:
        raise BundleError(path, "sliding_window.overlap must be in [0, 1)")
    if mode not in _BLEND_MODES:
        raise BundleError(path, f"sliding_window.mode must be one of {sorted(_BLEND_MODES)}")
    activation = ""
    threshold: Any = 0.5
    min_volume: Any = 0.0
    connectivity: Any = 3
    for kind, step in _steps(config, "postprocessing", path):
        if kind == "activations":
            activation = "sigmoid" if step.get("sigmoid") else "softmax" if step.get("softmax") else ""
        elif kind == "as_discrete":
            threshold = step.get("threshold")
            if not isinstance(threshold, int | float) or not 0.0 < threshold < 1.0:
                raise BundleError(path, "postprocessing AsDiscreted.threshold must be in (0, 1)")
        elif kind == "remove_small_objects":
            min_volume, connectivity = step.get("min_size", 0), step.get("connectivity", 1)
            if not isinstance(min_volume, int | float) or min_volume < 0 or not step.get("by_measure"):
                raise BundleError(path, "RemoveSmallObjectsd needs min_size >= 0 (mm3) with by_measure: true")
            if connectivity not in (1, 2, 3):
                raise BundleError(path, "RemoveSmallObjectsd.connectivity must be 1, 2 or 3")
        else:
            raise BundleError(path, f"postprocessing: {step.get('_target_')!r} is not a segmentation step")
    if not activation:
        raise BundleError(path, "postprocessing needs Activationsd with sigmoid or softmax")
    return VolumeSpec(
        spacing=(spacing[0], spacing[1], spacing[2]),
        intensity=None if intensity is None else (intensity[0], intensity[1], intensity[2], intensity[3]),
        clip=clip,
        sliding_window=SlidingWindowSpec((roi[0], roi[1], roi[2]), batch, float(overlap), str(mode)),
        activation=activation,
        threshold=float(threshold),
        min_volume_mm3=float(min_volume),
        connectivity=int(connectivity),
        lung_field=_lung_field(config, path),
    )


def _lung_field(config: dict[str, Any], path: Path) -> LungFieldSpec | None:
    section = config.get("lung_field")
    if section is None:
        return None
    if not isinstance(section, dict):
        raise BundleError(path, "lung_field must be an object")
    values = [section.get(k) for k in ("air_below_hu", "closing_mm", "min_fraction")]
    air, closing, fraction = _numbers(
        values, 3, "lung_field air_below_hu/closing_mm/min_fraction", path, positive=False
    )
    if closing <= 0 or not 0.0 < fraction <= 1.0:
        raise BundleError(path, "lung_field needs closing_mm > 0 and min_fraction in (0, 1]")
    return LungFieldSpec(air, closing, fraction)


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

    reasons = tuple(v.lower() for v in upper_list("reasons", False))
    return Routing(
        upper_list("modalities", True),
        upper_list("body_parts", False),
        upper_list("view_positions", False),
        reasons,
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
        size_rule = item.get("urgent_from_diameter_mm")
        if size_rule is not None:
            if not isinstance(size_rule, int | float) or isinstance(size_rule, bool) or size_rule <= 0:
                raise BundleError(path, f"{where}.urgent_from_diameter_mm must be a positive number")
            spec = dataclasses.replace(spec, urgent_from_diameter_mm=float(size_rule))
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
