"""Typed values that cross the package boundary: an image in, a model's result out.

Arrays in, typed results out (DESIGN.md §3): the worker converts these into the domain's
``clinic.ai.service.ReadIn``; nothing here knows about the database, the broker or DICOM networking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The label every result of a model trained on synthetic phantoms carries (DESIGN.md §7).
SYNTHETIC_DISCLAIMER = "synthetic demo model — not for clinical use"


class Urgency:
    """Urgency class of a positive finding (the worklist's priority scale: higher is sooner)."""

    ROUTINE = 0
    URGENT = 1
    STAT = 2


@dataclass(frozen=True)
class ImageInput:
    """One 2D image, display-ready.

    ``pixels`` is float32, H×W, in [0, 1] with the modality LUT and the VOI LUT/window applied and
    MONOCHROME1 inverted, so that a higher value is always brighter (more attenuation on an X-ray).
    """

    pixels: np.ndarray
    sop_instance_uid: str = ""
    modality: str = ""
    body_part: str = ""
    view_position: str = ""
    pixel_spacing: tuple[float, float] | None = None  # mm (row, col)


@dataclass(frozen=True)
class VolumeInput:
    """One CT (or other cross-sectional) series as a volume in its stored geometry.

    ``hu`` is float32 (z, y, x) after the Modality LUT (Rescale Slope/Intercept: Hounsfield units
    for CT); slice ``k`` is ``sop_instance_uids[k]``, in ascending order of Image Position
    (Patient) along the slice normal (PS3.3 C.7.6.2.1.1). ``spacing`` is (z, y, x) mm: the slice
    step, then Pixel Spacing (row step, column step). ``origin`` is the first slice's Image
    Position (Patient) and ``direction`` the row, column and normal direction cosines (x, y, z
    each), when the series has them.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    sop_instance_uids: tuple[str, ...]
    series_uid: str = ""
    modality: str = ""
    body_part: str = ""
    origin: tuple[float, float, float] | None = None
    direction: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise ValueError(f"VolumeInput.hu must be (z, y, x), got shape {self.hu.shape}")
        if len(self.sop_instance_uids) != self.hu.shape[0]:
            raise ValueError(f"{len(self.sop_instance_uids)} SOP instance UIDs for {self.hu.shape[0]} slices")


@dataclass(frozen=True)
class Measurement:
    """A number a model measured: ``unit`` is UCUM (``{count}``, ``mm``, ``mm3``); ``finding_code``
    names the finding it describes."""

    code: str
    label: str
    value: float
    unit: str
    finding_code: str = ""


@dataclass(frozen=True)
class Finding:
    """One finding of one model on one image.

    ``heatmap`` is float32 H×W in [0, 1] at the model's input resolution (Grad-CAM) and covers the
    whole input image: the input is resized, never cropped, so it maps onto the original by scaling.
    """

    code: str
    label: str
    probability: float
    threshold: float
    urgency: int
    heatmap: np.ndarray | None

    @property
    def positive(self) -> bool:
        """Positive at this model version's operating threshold (same rule as ``clinic.ai``)."""
        return self.probability >= self.threshold


@dataclass(frozen=True)
class ModelResult:
    """A model's read. For a segmentation model ``sop_instance_uid`` is the key slice (where the
    largest component peaks; the middle slice when none)."""

    model_id: str
    model_name: str
    model_version: str
    is_synthetic: bool
    disclaimer: str
    device: str
    inference_ms: float
    findings: tuple[Finding, ...]
    sop_instance_uid: str
    #: Segmentation: uint8 (frames, rows, cols), 1 = the finding, frame k = ``mask_sop_uids[k]``.
    mask: np.ndarray | None = None
    mask_sop_uids: tuple[str, ...] = ()
    measurements: tuple[Measurement, ...] = ()
    series_uid: str = ""

    def finding(self, code: str) -> Finding:
        for f in self.findings:
            if f.code == code:
                return f
        raise KeyError(code)

    @property
    def urgency(self) -> int:
        """The highest urgency class among the positive findings (0 when none is positive)."""
        return max((f.urgency for f in self.findings if f.positive), default=Urgency.ROUTINE)
