"""Read a DICOM image file into a display-ready :class:`~inference.types.ImageInput`.

The grey-scale pipeline follows PS3.3 C.11 / PS3.4 N.2 in order: stored values → Modality LUT
(Rescale Slope/Intercept or Modality LUT Sequence) → VOI LUT (VOI LUT Sequence, else the first
Window Center/Width with its VOI LUT Function, else the image's min/max) → MONOCHROME1 inversion, so
that in the result a higher value is always brighter. Compressed transfer syntaxes are decoded by the
pylibjpeg plugins (JPEG 2000, JPEG lossless/baseline), pyjpegls (JPEG-LS) and pylibjpeg-rle/pydicom
(RLE). Only the first frame of a multi-frame image is read.

:func:`load_volume` reads a whole single-frame series (CT, MR, PET) into a
:class:`~inference.types.VolumeInput`: Modality LUT only (Hounsfield units for CT; no VOI window),
slices ordered by Image Position (Patient) along the normal of Image Orientation (Patient)
(PS3.3 C.7.6.2.1.1), and a series that is not one regular grid is refused with
:class:`InconsistentSeriesError` naming the rule it breaks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.pixels.utils import pixel_array

from inference.errors import ImageLoadError, InconsistentSeriesError
from inference.types import ImageInput, VolumeInput

__all__ = [
    "ImageLoadError",
    "InconsistentSeriesError",
    "apply_window",
    "load_image",
    "load_volume",
    "to_display",
]

_COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420"}
#: ITU-R BT.601 luma weights, the usual grey conversion of an RGB image.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def load_image(path: str | os.PathLike[str]) -> ImageInput:
    """Decode the first frame of a DICOM image file; raise :class:`ImageLoadError` when impossible."""
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError) as exc:
        raise ImageLoadError(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageLoadError(path, "the dataset has no pixel data")
    try:
        frame = pixel_array(ds, index=0)
    except Exception as exc:  # decoders raise many types (RuntimeError, ValueError, NotImplementedError...)
        tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(tsyntax, "name", str(tsyntax))
        raise ImageLoadError(
            path, f"pixel data cannot be decoded ({name}: {type(exc).__name__}: {exc})"
        ) from exc
    try:
        pixels = to_display(frame, ds)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise ImageLoadError(path, f"cannot apply the LUTs ({type(exc).__name__}: {exc})") from exc
    if pixels.ndim != 2 or pixels.size == 0:
        raise ImageLoadError(path, f"not a 2D image (shape {pixels.shape})")
    if not np.all(np.isfinite(pixels)):
        raise ImageLoadError(path, "the image holds non-finite values")
    return ImageInput(
        pixels=pixels,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        modality=str(ds.get("Modality", "")).strip().upper(),
        body_part=str(ds.get("BodyPartExamined", "")).strip().upper(),
        view_position=str(ds.get("ViewPosition", "")).strip().upper(),
        pixel_spacing=_pixel_spacing(ds),
    )


def to_display(frame: np.ndarray, ds: Dataset) -> np.ndarray:
    """One decoded frame → float32 H×W in [0, 1], higher = brighter (pure; ``frame`` is not changed)."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(frame, ds).astype(np.float64)
        return _luminance(rgb, _max_value(rgb)).astype(np.float32)
    if photometric in _COLOUR or (frame.ndim == 3 and frame.shape[-1] == 3):
        bits = int(ds.get("BitsStored", 8) or 8)
        return _luminance(frame.astype(np.float64), float(2**bits - 1)).astype(np.float32)
    if frame.ndim != 2:
        raise ValueError(f"unexpected frame shape {frame.shape} for {photometric}")
    values = np.asarray(apply_modality_lut(frame, ds), dtype=np.float64)
    out = _apply_voi(values, ds)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return np.ascontiguousarray(out, dtype=np.float32)


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Window values onto [0, 1] per PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID)."""
    function = function.strip().upper() or "LINEAR"
    x = np.asarray(values, dtype=np.float64)
    if function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"window width {width} must be > 0")
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -700, 700)))
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"window width {width} must be > 0")
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if function != "LINEAR":
        raise ValueError(f"unknown VOI LUT Function {function!r}")
    if width < 1:
        raise ValueError(f"window width {width} must be >= 1 for LINEAR")
    if width == 1:  # C.11.2.1.2.1: a threshold at the centre
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _apply_voi(values: np.ndarray, ds: Dataset) -> np.ndarray:
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        item = ds.VOILUTSequence[0]
        lut_bits = int(item.LUTDescriptor[2])
        out = np.asarray(apply_voi(values, ds, index=0), dtype=np.float64)
        return np.clip(out / float(2**lut_bits - 1), 0.0, 1.0)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None:
        try:
            return apply_window(values, center, width, str(ds.get("VOILUTFunction", "LINEAR")))
        except ValueError:
            pass  # an invalid window falls back to the image's own range, like a viewer does
    return _min_max(values)


def _min_max(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros_like(values, dtype=np.float64)
    return (values - lo) / (hi - lo)


def _luminance(rgb: np.ndarray, max_value: float) -> np.ndarray:
    grey = rgb[..., :3] @ _LUMA
    return np.clip(grey / max(max_value, 1.0), 0.0, 1.0)


def _max_value(arr: np.ndarray) -> float:
    if np.issubdtype(arr.dtype, np.integer):
        return float(np.iinfo(arr.dtype).max)
    return float(arr.max()) if arr.size else 1.0


def _first(value: Any) -> float | None:
    """The first of a possibly multi-valued Window Center/Width; ``None`` when absent or empty."""
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            try:
                row, col = float(value[0]), float(value[1])
            except (TypeError, ValueError):
                continue
            if row > 0 and col > 0:  # some writers put 0\0 when the spacing is unknown
                return row, col
    return None


# --- volumes --------------------------------------------------------------------------------------

#: Direction cosines that differ by more than this are different orientations.
_ORIENTATION_TOLERANCE = 1e-3
#: Slice steps may differ by this fraction of the median step (rounding in the headers) ...
_STEP_TOLERANCE = 0.05


def load_volume(paths: Sequence[str | os.PathLike[str]]) -> VolumeInput:
    """Read a single-frame series into a (z, y, x) float32 volume after the Modality LUT.

    Refused with :class:`InconsistentSeriesError` (a permanent error): files of several series,
    missing Image Position/Orientation (Patient) or Pixel Spacing, slices of different sizes,
    orientations or pixel spacings, two slices at the same position, a gantry tilt (slices not
    stacked along their normal) and uneven or missing slices (steps more than 5 % apart).
    Unreadable files raise :class:`ImageLoadError`.
    """
    if not paths:
        raise InconsistentSeriesError(".", "no instances")
    slices = [_read_slice(Path(p)) for p in paths]
    first = slices[0]
    series = str(first.ds.get("SeriesInstanceUID", ""))
    folder = Path(paths[0]).parent
    for sl in slices[1:]:
        if str(sl.ds.get("SeriesInstanceUID", "")) != series:
            raise InconsistentSeriesError(sl.path, f"belongs to another series than {first.path.name}")
        if sl.pixels.shape != first.pixels.shape:
            raise InconsistentSeriesError(
                sl.path, f"slice size {sl.pixels.shape} differs from {first.pixels.shape} (mixed sizes)"
            )
        if np.max(np.abs(sl.orientation - first.orientation)) > _ORIENTATION_TOLERANCE:
            raise InconsistentSeriesError(sl.path, "Image Orientation (Patient) differs (mixed orientations)")
        if np.max(np.abs(np.subtract(sl.spacing, first.spacing))) > 1e-3 * max(first.spacing):
            raise InconsistentSeriesError(sl.path, f"Pixel Spacing {sl.spacing} differs from {first.spacing}")
    row, col = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row, col)
    slices.sort(key=lambda sl: float(sl.position @ normal))
    step = _slice_step(slices, normal, folder)
    hu = np.stack([sl.pixels for sl in slices]).astype(np.float32, copy=False)
    if not np.all(np.isfinite(hu)):
        raise InconsistentSeriesError(folder, "the pixel values are not finite after the Modality LUT")
    return VolumeInput(
        hu=hu,
        spacing=(step, first.spacing[0], first.spacing[1]),
        sop_instance_uids=tuple(str(sl.ds.get("SOPInstanceUID", "")) for sl in slices),
        series_uid=series,
        modality=str(first.ds.get("Modality", "")).strip().upper(),
        body_part=str(first.ds.get("BodyPartExamined", "")).strip().upper(),
        origin=(float(slices[0].position[0]), float(slices[0].position[1]), float(slices[0].position[2])),
        direction=tuple(float(v) for v in (*row, *col, *normal)),
    )


class _Slice:
    def __init__(self, path: Path, ds: Dataset, pixels: np.ndarray) -> None:
        self.path = path
        self.ds = ds
        self.pixels = pixels
        self.position = _floats(ds, "ImagePositionPatient", 3, path)
        self.orientation = _floats(ds, "ImageOrientationPatient", 6, path)
        spacing = _pixel_spacing(ds)
        if spacing is None:
            raise InconsistentSeriesError(path, "Pixel Spacing is missing")
        self.spacing = spacing


def _read_slice(path: Path) -> _Slice:
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError) as exc:
        raise ImageLoadError(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    if "PixelData" not in ds:
        raise ImageLoadError(path, "the dataset has no pixel data")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise InconsistentSeriesError(path, "a multi-frame image is not a slice of a single-frame series")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise InconsistentSeriesError(path, "a colour image is not a slice of a grey-scale volume")
    try:
        frame = pixel_array(ds, index=0)
        values = np.asarray(apply_modality_lut(frame, ds), dtype=np.float32)
    except Exception as exc:  # decoders raise many types (RuntimeError, ValueError, NotImplementedError...)
        raise ImageLoadError(path, f"pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
    if values.ndim != 2:
        raise InconsistentSeriesError(path, f"not a 2D slice (shape {values.shape})")
    return _Slice(path, ds, values)


def _slice_step(slices: list[_Slice], normal: np.ndarray, folder: Path) -> float:
    """The slice step (mm) along the normal; the slices must be one regular stack along it."""
    if len(slices) == 1:
        thickness = slices[0].ds.get("SliceThickness")
        try:
            value = float(thickness) if thickness not in (None, "") else 1.0
        except (TypeError, ValueError):
            value = 1.0
        return value if value > 0 else 1.0
    positions = np.stack([sl.position for sl in slices])
    along = positions @ normal
    steps = np.diff(along)
    for k, step in enumerate(steps):
        if step < 1e-3:
            raise InconsistentSeriesError(
                slices[k + 1].path, f"at the same position as {slices[k].path.name} (duplicate slice)"
            )
    median = float(np.median(steps))
    if np.max(np.abs(steps - median)) > _STEP_TOLERANCE * median:
        raise InconsistentSeriesError(
            folder, f"uneven slice steps {steps.min():.3f}–{steps.max():.3f} mm (missing or extra slices)"
        )
    drift = positions - np.outer(along - along[0], normal) - positions[0]
    if np.max(np.linalg.norm(drift, axis=1)) > 0.5 * max(slices[0].spacing):
        raise InconsistentSeriesError(folder, "slices are not stacked along their normal (gantry tilt)")
    return median


def _floats(ds: Dataset, keyword: str, n: int, path: Path) -> np.ndarray:
    value = ds.get(keyword)
    try:
        out = np.array([float(v) for v in value], dtype=np.float64) if value is not None else None
    except (TypeError, ValueError):
        out = None
    if out is None or out.shape != (n,) or not np.all(np.isfinite(out)):
        raise InconsistentSeriesError(path, f"{keyword} is missing or malformed")
    return out
