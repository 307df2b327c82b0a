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
    model_id: str
    model_name: str
    model_version: str
    is_synthetic: bool
    disclaimer: str
    device: str
    inference_ms: float
    findings: tuple[Finding, ...]
    sop_instance_uid: str

    def finding(self, code: str) -> Finding:
        for f in self.findings:
            if f.code == code:
                return f
        raise KeyError(code)

    @property
    def urgency(self) -> int:
        """The highest urgency class among the positive findings (0 when none is positive)."""
        return max((f.urgency for f in self.findings if f.positive), default=Urgency.ROUTINE)
