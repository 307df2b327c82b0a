"""3D segmentation models: a CT series in, a mask, its components and their measurements out.

A runner is receive → pure functions → emit (STYLE.md, Inference). :meth:`SegmentationModel.predict_volume`
runs, in order:

1. :meth:`~SegmentationModel.prepare`: resample the HU volume to the bundle's working spacing
   (trilinear) and window it (``ScaleIntensityRanged``);
2. :meth:`~SegmentationModel.forward`: MONAI ``sliding_window_inference`` with the bundle's
   ``roi_size`` / ``sw_batch_size`` / ``overlap`` / blending mode (``sw_batch_size=2`` halves the
   time on 2 CPU cores, DESIGN.md §10), then sigmoid or softmax;
3. :meth:`~SegmentationModel.postprocess`: resample the probability back onto the source grid,
   threshold, connected components (``RemoveSmallObjectsd``'s connectivity and minimum volume),
   measurements.

Measurements (UCUM units): ``nodule_count`` ({count}), ``largest_diameter`` (mm) and
``total_volume`` (mm3). ``largest_diameter`` is the **equivalent-sphere diameter** of the largest
component, ``(6 V / π)^(1/3)``: volumetry is what Fleischner 2017 gives thresholds for (6 mm ≈
100 mm³, 8 mm ≈ 250 mm³), and it does not depend on the slice a reader picks.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from inference.bundle import BundleSpec, FindingSpec, VolumeSpec
from inference.errors import BundleError
from inference.registry import BundleModel, load_network
from inference.types import Finding, Measurement, ModelResult, Urgency, VolumeInput
from inference.volume import (
    Component,
    connected_components,
    lung_air,
    lung_field_fraction,
    resample,
    scale_intensity_range,
    working_shape,
)

__all__ = ["SegmentationModel", "SegmentationOutput"]


@dataclass(frozen=True)
class SegmentationOutput:
    """What :meth:`SegmentationModel.postprocess` returns: the uint8 mask on the source grid, its
    components (largest first) and the key slice (where the largest one peaks)."""

    mask: np.ndarray
    components: list[Component]
    key_slice: int


class SegmentationModel(BundleModel):
    """One 3D segmentation bundle's network, loaded once onto its device."""

    #: A 3D model reads a whole series (the worker plans it per series, not per instance).
    is_volumetric = True

    def __init__(self, spec: BundleSpec, device: str | torch.device = "auto") -> None:
        if spec.volume is None:
            raise BundleError(spec.root / "configs" / "inference.json", "not a segmentation bundle")
        super().__init__(spec, device)
        self.volume_spec: VolumeSpec = spec.volume
        self._net = load_network(spec, self.device, torch.contiguous_format)
        self._lock = threading.Lock()  # one volume at a time: a volume's activations are large

    # --- the three stages ----------------------------------------------------------------------

    def prepare(self, volume: VolumeInput) -> torch.Tensor:
        """HU (z, y, x) → the network's input (1, 1, z', y', x') on the model's device."""
        spec = self.volume_spec
        shape = working_shape(volume.hu.shape, volume.spacing, spec.spacing)
        t = torch.from_numpy(np.ascontiguousarray(volume.hu, dtype=np.float32)).to(self.device)
        x = resample(t, shape)
        if spec.intensity is not None:
            x = scale_intensity_range(x, *spec.intensity, clip=spec.clip)
        return x[None, None]

    @property
    def network(self) -> torch.nn.Module:
        """The loaded network (in eval mode, parameters frozen)."""
        return self._net

    def forward(
        self,
        x: torch.Tensor,
        sw_batch_size: int | None = None,
        predictor: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Sliding-window inference; the finding's probability (1, 1, z', y', x'), float32.

        *predictor* replaces the network for the windows (a benchmark wraps it to time its calls).
        """
        sw = self.volume_spec.sliding_window
        index = self.spec.findings[0].output_index
        with self._lock, torch.inference_mode():
            logits = sliding_window_inference(
                x,
                roi_size=sw.roi_size,
                sw_batch_size=sw_batch_size or sw.sw_batch_size,
                predictor=predictor or self._net,
                overlap=sw.overlap,
                mode=sw.mode,
            )
            assert isinstance(logits, torch.Tensor)
            logits = logits.float()
            if self.volume_spec.activation == "softmax":
                prob = torch.softmax(logits, dim=1)[:, index : index + 1]
            else:
                prob = torch.sigmoid(logits[:, index : index + 1])
        return prob

    def postprocess(
        self, prob: torch.Tensor, volume: VolumeInput, image: torch.Tensor | None = None
    ) -> SegmentationOutput:
        """Probability on the working grid → mask on the source grid, components, key slice.

        With the bundle's ``lung_field`` rule and the network's input *image*, components outside
        the lungs are dropped.
        """
        spec = self.volume_spec
        source = resample(prob, volume.hu.shape)[0, 0]
        mask = (source >= spec.threshold).cpu().numpy()
        probability = source.cpu().numpy()
        labels, components = connected_components(
            mask, probability, volume.spacing, spec.min_volume_mm3, spec.connectivity
        )
        if spec.lung_field is not None and image is not None and components:
            labels, components = self._in_lungs(labels, components, image, volume)
        out = (labels > 0).astype(np.uint8)
        if components:
            largest = components[0]
            z0, z1 = largest.bbox[0]
            inside = np.where(labels[z0:z1] == largest.label, probability[z0:z1], -1.0)
            key = z0 + int(np.unravel_index(int(np.argmax(inside)), inside.shape)[0])
        else:
            key = volume.hu.shape[0] // 2
        return SegmentationOutput(out, components, key)

    def _in_lungs(
        self, labels: np.ndarray, components: list[Component], image: torch.Tensor, volume: VolumeInput
    ) -> tuple[np.ndarray, list[Component]]:
        """The components that lie in the lung field (on the working grid), renumbered."""
        rule = self.volume_spec.lung_field
        assert rule is not None
        level = rule.air_below_hu
        if self.volume_spec.intensity is not None:  # the image is windowed: window the level too
            a_min, a_max, b_min, b_max = self.volume_spec.intensity
            level = (level - a_min) / (a_max - a_min) * (b_max - b_min) + b_min
        grid = image[0, 0].float().cpu().numpy()
        lungs = lung_air(grid < level)
        ratio = np.array(grid.shape) / np.array(volume.hu.shape)
        spacing = np.array(volume.spacing) / ratio
        kept: list[Component] = []
        for c in components:
            box = tuple(slice(a, b) for a, b in c.bbox)
            points = np.argwhere(labels[box] == c.label) + np.array([a for a, _ in c.bbox])
            on_grid = np.minimum(((points + 0.5) * ratio).astype(int), np.array(grid.shape) - 1)
            on_grid = np.unique(on_grid, axis=0)
            if lung_field_fraction(lungs, on_grid, spacing, rule.closing_mm) >= rule.min_fraction:
                kept.append(c)
        remap = np.zeros(len(components) + 1, np.int32)
        renumbered = []
        for new, c in enumerate(kept, start=1):
            remap[c.label] = new
            renumbered.append(dataclasses.replace(c, label=new))
        return remap[labels], renumbered

    # --- the whole read ----------------------------------------------------------------------

    def predict_volume(self, volume: VolumeInput, sw_batch_size: int | None = None) -> ModelResult:
        """Segment *volume*; the finding, its measurements and the mask aligned to its slices."""
        start = time.perf_counter()
        image = self.prepare(volume)
        out = self.postprocess(self.forward(image, sw_batch_size), volume, image)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        spec = self.spec.findings[0]
        largest = out.components[0] if out.components else None
        diameter = largest.equivalent_diameter_mm if largest else 0.0
        probability = largest.max_probability if largest else 0.0
        finding = Finding(
            code=spec.code,
            label=spec.label,
            probability=float(probability),
            threshold=spec.threshold,
            urgency=_urgency(spec, diameter),
            heatmap=None,
        )
        return self.result(
            inference_ms=elapsed_ms,
            findings=(finding,),
            sop_instance_uid=volume.sop_instance_uids[out.key_slice] if volume.sop_instance_uids else "",
            mask=out.mask,
            mask_sop_uids=tuple(volume.sop_instance_uids),
            measurements=_measurements(spec, out.components, diameter),
            series_uid=volume.series_uid,
        )

    def __repr__(self) -> str:
        return (
            f"SegmentationModel({self.model_id!r}, {self.name!r}, version={self.version!r}, "
            f"device={self.device})"
        )


def _urgency(spec: FindingSpec, diameter_mm: float) -> int:
    """The finding's urgency, or routine below its size rule.

    A demo rule inspired by the size cut-offs of the Fleischner Society 2017 guidelines and
    Lung-RADS v2022, where a solid nodule of 8 mm or more calls for early work-up (CT at 3 months,
    PET/CT or tissue sampling); it is not those guidelines, which also weigh risk and history.
    """
    if spec.urgent_from_diameter_mm is not None and diameter_mm < spec.urgent_from_diameter_mm:
        return Urgency.ROUTINE
    return spec.urgency


def _measurements(spec: FindingSpec, components: list[Component], diameter: float) -> tuple[Measurement, ...]:
    total = sum(c.volume_mm3 for c in components)
    return (
        Measurement("nodule_count", f"{spec.label} count", float(len(components)), "{count}", spec.code),
        Measurement(
            "largest_diameter",
            f"Largest {spec.label.lower()} diameter (equivalent sphere)",
            round(diameter, 2),
            "mm",
            spec.code,
        ),
        Measurement("total_volume", f"Total {spec.label.lower()} volume", round(total, 1), "mm3", spec.code),
    )
