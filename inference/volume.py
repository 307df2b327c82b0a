"""Pure array functions of 3D segmentation: resampling, intensity windowing, connected components
and nodule measurements. Arrays are (z, y, x); spacings are mm in the same order.

Nothing here changes its input. Resampling maps the volume's outer edges onto each other
(``align_corners=False``), so resampling to a working grid and back again is a consistent pair:
a voxel's centre lands where it was.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def working_shape(
    shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]
) -> tuple[int, int, int]:
    """The grid size that covers the same extent at (about) ``target_spacing``; at least 1 voxel."""
    if len(shape) != 3 or len(spacing) != 3 or len(target_spacing) != 3:
        raise ValueError("shape and spacings must have three values (z, y, x)")
    out = [max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target_spacing, strict=True)]
    return out[0], out[1], out[2]


def resample(array: np.ndarray | torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Trilinear resampling of a (z, y, x) array (or (N, C, z, y, x) tensor) to ``shape``.

    Returns a float32 tensor on the input's device, (z, y, x) or (N, C, z, y, x) as given. A 2×
    decimation samples midway between voxel centres, i.e. averages 2×2 blocks.
    """
    t = torch.as_tensor(array)
    plain = t.ndim == 3
    if plain:
        t = t[None, None]
    if t.ndim != 5:
        raise ValueError(f"expected a (z, y, x) array or an (N, C, z, y, x) tensor, got {tuple(t.shape)}")
    size = (int(shape[0]), int(shape[1]), int(shape[2]))
    t = t.float()
    if tuple(t.shape[2:]) != size:
        t = F.interpolate(t, size=size, mode="trilinear", align_corners=False)
    return t[0, 0] if plain else t


def scale_intensity_range(
    array: np.ndarray | torch.Tensor, a_min: float, a_max: float, b_min: float, b_max: float, clip: bool
) -> torch.Tensor:
    """MONAI's ScaleIntensityRange: ``[a_min, a_max] → [b_min, b_max]`` linearly, optionally clipped."""
    if a_max == a_min:
        raise ValueError("a_min and a_max must differ")
    t = torch.as_tensor(array).float()
    out = (t - a_min) / (a_max - a_min) * (b_max - b_min) + b_min
    if clip:
        out = out.clamp(min(b_min, b_max), max(b_min, b_max))
    return out


@dataclass(frozen=True)
class Component:
    """One connected component of a binary mask (a candidate nodule)."""

    label: int  # its value in the label map returned with it
    voxels: int
    volume_mm3: float
    max_probability: float
    bbox: tuple[tuple[int, int], ...]  # (start, stop) per axis

    @property
    def equivalent_diameter_mm(self) -> float:
        """Diameter of the sphere of the same volume (Fleischner 2017's volumetric equivalence)."""
        return equivalent_diameter(self.volume_mm3)


def equivalent_diameter(volume_mm3: float) -> float:
    return float((6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0)) if volume_mm3 > 0 else 0.0


def connected_components(
    mask: np.ndarray,
    probability: np.ndarray,
    spacing: Sequence[float],
    min_volume_mm3: float = 0.0,
    connectivity: int = 3,
) -> tuple[np.ndarray, list[Component]]:
    """Connected components of ``mask`` of at least ``min_volume_mm3``, largest first.

    ``connectivity`` as in scikit-image and MONAI's RemoveSmallObjects: 1 = voxels sharing a face,
    2 = or an edge, 3 = or a corner (26-connectivity, the default).

    Returns a label map (int32, 0 = background, k = ``components[k - 1]``) and the components; the
    ones below the minimum volume are dropped from both.
    """
    if mask.shape != probability.shape or mask.ndim != 3:
        raise ValueError(f"mask {mask.shape} and probability {probability.shape} must be the same 3D shape")
    structure = ndimage.generate_binary_structure(3, connectivity)
    labels, count = ndimage.label(np.asarray(mask, dtype=bool), structure=structure)
    if count == 0:
        return labels.astype(np.int32), []
    voxel_mm3 = float(np.prod([float(s) for s in spacing]))
    # Per component inside its bounding box: ndimage.sum_labels / maximum over a whole 512² × 120
    # volume cost 1.8 s and 4.5 s here, the boxes a few milliseconds.
    found = []
    for old, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        inside = labels[box] == old
        size = int(inside.sum())
        if size * voxel_mm3 >= min_volume_mm3:
            found.append((size, float(probability[box][inside].max()), box, old))
    found.sort(key=lambda item: (-item[0], item[3]))
    remap = np.zeros(count + 1, np.int32)
    components = []
    for new, (size, peak, sl, old) in enumerate(found, start=1):
        remap[old] = new
        components.append(
            Component(
                label=new,
                voxels=size,
                volume_mm3=size * voxel_mm3,
                max_probability=peak,
                bbox=tuple((int(s.start), int(s.stop)) for s in sl),
            )
        )
    return remap[labels], components


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Sørensen–Dice coefficient of two boolean arrays (1.0 when both are empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def lung_air(air: np.ndarray) -> np.ndarray:
    """The air of a (z, y, x) boolean air mask that is not connected (6-connectivity) to the
    in-plane border of the volume: the lungs and airways, not the air around the patient."""
    labels, count = ndimage.label(np.asarray(air, dtype=bool))
    if count == 0:
        return np.zeros(labels.shape, bool)
    edges = (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1])
    outside = np.zeros(count + 1, bool)
    outside[np.unique(np.concatenate([e.ravel() for e in edges]))] = True
    outside[0] = True
    return np.asarray(~outside[labels])


def lung_field_fraction(
    lung: np.ndarray, points: np.ndarray, spacing: Sequence[float], closing_mm: float
) -> float:
    """The fraction of *points* ((k, 3) voxel indices of *lung*'s grid) inside the lung field: the
    lung air closed (dilated, then eroded) by *closing_mm*, which fills vessels, nodules and the
    bites that juxtapleural nodules take out of the lung, and nothing beyond its outline.

    Computed in a box around the points only (a few milliseconds, not a whole-volume transform).
    """
    if len(points) == 0:
        return 0.0
    sampling = np.asarray([float(s) for s in spacing])
    reach = np.ceil(2.0 * closing_mm / sampling).astype(int) + 1
    lo = np.maximum(points.min(axis=0) - reach, 0)
    hi = np.minimum(points.max(axis=0) + reach + 1, lung.shape)
    box = lung[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    if not box.any():
        return 0.0
    dilated = ndimage.distance_transform_edt(~box, sampling=sampling) <= closing_mm
    closed = ndimage.distance_transform_edt(dilated, sampling=sampling) > closing_mm
    local = points - lo
    return float(closed[local[:, 0], local[:, 1], local[:, 2]].mean())
