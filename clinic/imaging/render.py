"""Rendering stored DICOM images and AI heatmaps for the browser.

The grayscale pipeline is the one of PS3.3 C.11 (and PS3.4 N.2.1): stored values → Modality LUT
(Rescale Slope/Intercept or a Modality LUT Sequence, C.11.1) → VOI LUT (a VOI LUT Sequence or the
window given, C.11.2; LINEAR, LINEAR_EXACT and SIGMOID functions, C.11.2.1.2–3) → MONOCHROME1 is
inverted so that the picture looks as the modality intended. One frame is decoded (the first
unless another is asked for, e.g. by DICOMweb's frame-level ``/rendered``, PS3.18 §9.5).
Compressed transfer syntaxes are decoded by pydicom's pixel handlers (pylibjpeg and its plugins).

The image is scaled down to ``max_size`` *before* the VOI transform: a window change then needs no
new decode, and the decoded, modality-LUT'd, scaled array is kept in a small LRU cache.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut
from pydicom.pixels.utils import pixel_array

#: Upper bound of ``max_size`` (pixels along the longer side).
MAX_RENDER_SIZE = 4096


class RenderError(Exception):
    """The file cannot be rendered (no pixel data, unsupported layout, undecodable)."""


class ImageFormat(StrEnum):
    PNG = "png"
    JPEG = "jpeg"

    @property
    def media_type(self) -> str:
        return f"image/{self.value}"


@dataclass(frozen=True)
class Window:
    center: float
    width: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.center) and math.isfinite(self.width)) or self.width < 1:
            raise ValueError("window width must be >= 1 and both values finite")


@dataclass(frozen=True)
class _Prepared:
    """First frame after the Modality LUT, scaled down, plus what the VOI stage needs."""

    values: np.ndarray  # float32, (rows, cols) or (rows, cols, 3) for colour
    photometric: str
    window: Window | None
    voi_function: str
    voi_lut: tuple[int, np.ndarray] | None  # (first mapped value, LUT data)


# --- pixel pipeline -------------------------------------------------------------------------


def _first(value: object) -> float | None:
    """The first value of a possibly multi-valued DS element, as a float."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    if value is None:
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def header_window(ds: Dataset) -> Window | None:
    """The first Window Center/Width pair of the header (C.11.2.1.2), if any."""
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is None or width is None or width < 1:
        return None
    return Window(center, width)


def default_window(path: Path) -> Window | None:
    """The header's window without reading the pixel data (for the viewer's presets)."""
    return header_window(dcmread(path, stop_before_pixels=True))


def auto_window(path: Path, max_size: int = 1024) -> Window | None:
    """A window over the 0.5–99.5 percentiles of the (scaled) first frame; grayscale only."""
    values = _cache.get(path, max_size).values
    if values.ndim != 2:
        return None
    low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    return Window(center=(low + high) / 2.0, width=max(high - low, 1.0))


def _voi_lut(ds: Dataset) -> tuple[int, np.ndarray] | None:
    seq = ds.get("VOILUTSequence")
    if not seq:
        return None
    item = seq[0]
    descriptor = [int(v) for v in item.LUTDescriptor]
    raw = item.LUTData
    data = np.asarray(
        raw if not isinstance(raw, bytes) else np.frombuffer(raw, dtype="<u2"), dtype=np.float32
    )
    if data.size == 0:
        return None
    return descriptor[1], data


def _scale(values: np.ndarray, max_size: int) -> np.ndarray:
    rows, cols = values.shape[:2]
    factor = max_size / max(rows, cols)
    if factor >= 1.0:
        return values
    size = (max(1, round(cols * factor)), max(1, round(rows * factor)))
    if values.ndim == 2:
        return np.asarray(Image.fromarray(values, mode="F").resize(size, Image.Resampling.BOX))
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(values[..., c]), mode="F").resize(size, Image.Resampling.BOX)
        )
        for c in range(values.shape[2])
    ]
    return np.stack(channels, axis=-1)


def _prepare(path: Path, max_size: int, index: int = 0) -> _Prepared:
    ds = Dataset()
    try:
        frame = pixel_array(path, index=index, ds_out=ds)
    except Exception as exc:  # pydicom raises many types for undecodable or absent pixel data
        raise RenderError(f"cannot decode pixel data: {type(exc).__name__}") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples == 1:
        values = np.asarray(apply_modality_lut(frame, ds), dtype=np.float32)
        if values.ndim != 2:
            raise RenderError(f"unexpected frame shape {values.shape}")
    elif samples == 3 and frame.ndim == 3:
        values = frame.astype(np.float32)  # pydicom returns YBR as RGB already
    else:
        raise RenderError(f"unsupported layout: {samples} samples, shape {frame.shape}")
    return _Prepared(
        values=_scale(values, max_size),
        photometric=photometric,
        window=header_window(ds),
        voi_function=str(ds.get("VOILUTFunction", "LINEAR")).upper(),
        voi_lut=_voi_lut(ds) if samples == 1 else None,
    )


def apply_window(values: np.ndarray, window: Window, function: str = "LINEAR") -> np.ndarray:
    """VOI windowing to 0..1 (PS3.3 C.11.2.1.2 LINEAR / LINEAR_EXACT, C.11.2.1.3 SIGMOID)."""
    c, w = window.center, window.width
    if function == "SIGMOID":
        return (1.0 / (1.0 + np.exp(-4.0 * (values - c) / w))).astype(np.float32)
    if function == "LINEAR_EXACT":
        return np.clip((values - c) / w + 0.5, 0.0, 1.0).astype(np.float32)
    # LINEAR: [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2] maps onto the output range.
    width = max(w - 1.0, 1e-6)
    return np.clip((values - (c - 0.5)) / width + 0.5, 0.0, 1.0).astype(np.float32)


def _apply_lut(values: np.ndarray, lut: tuple[int, np.ndarray]) -> np.ndarray:
    first, data = lut
    index = np.clip(np.rint(values) - first, 0, data.size - 1).astype(np.int64)
    out: np.ndarray = data[index]
    low, high = float(data.min()), float(data.max())
    if high <= low:
        return np.zeros(out.shape, dtype=np.float32)
    return ((out - low) / (high - low)).astype(np.float32)


def _auto(values: np.ndarray) -> np.ndarray:
    low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    if high <= low:
        high = low + 1.0
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)


def _to_8bit(prepared: _Prepared, window: Window | None, voi_function: str | None = None) -> np.ndarray:
    values = prepared.values
    if values.ndim == 3:  # colour: no VOI stage (C.11 applies to grayscale); a given window still works
        unit = apply_window(values, window) if window else np.clip(values / 255.0, 0.0, 1.0)
    elif window is not None:
        unit = apply_window(values, window, voi_function or prepared.voi_function)
    elif prepared.voi_lut is not None:
        unit = _apply_lut(values, prepared.voi_lut)
    elif prepared.window is not None:
        unit = apply_window(values, prepared.window, prepared.voi_function)
    else:
        unit = _auto(values)
    if prepared.photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return np.rint(unit * 255.0).astype(np.uint8)


# --- cache -----------------------------------------------------------------------------------


class _LRU:
    """Process-local cache of prepared frames, keyed by file identity and size (thread-safe)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, int, int, int, int], _Prepared] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, max_size: int, index: int = 0) -> _Prepared:
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size, max_size, index)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        prepared = _prepare(path, max_size, index)
        with self._lock:
            self._items[key] = prepared
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return prepared


#: At most 1024² float32 per entry: 16 entries ≈ 64 MiB.
_cache = _LRU(capacity=16)


def render_image(
    path: Path,
    *,
    window: Window | None = None,
    max_size: int = 1024,
    frame: int = 0,
    voi_function: str | None = None,
) -> Image.Image:
    """Frame *frame* (0-based) of the DICOM file at *path* as an 8-bit image, at most *max_size*
    pixels on its longer side. *voi_function* (LINEAR, LINEAR_EXACT, SIGMOID) applies to the
    given *window* instead of the header's VOI LUT Function."""
    if not 1 <= max_size <= MAX_RENDER_SIZE:
        raise ValueError(f"max_size must be between 1 and {MAX_RENDER_SIZE}")
    if frame < 0:
        raise ValueError("frame must be >= 0")
    pixels = _to_8bit(_cache.get(path, max_size, frame), window, voi_function)
    return Image.fromarray(pixels, mode="RGB" if pixels.ndim == 3 else "L")


def encode_image(image: Image.Image, fmt: ImageFormat = ImageFormat.PNG, quality: int = 90) -> bytes:
    """PNG or JPEG bytes of *image*."""
    buffer = io.BytesIO()
    if fmt is ImageFormat.JPEG:
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def render_instance(
    path: Path,
    *,
    window: Window | None = None,
    max_size: int = 1024,
    fmt: ImageFormat = ImageFormat.PNG,
    frame: int = 0,
) -> bytes:
    """Frame *frame* (the first by default) of the DICOM file at *path* as PNG or JPEG bytes, at
    most *max_size* pixels on its longer side."""
    return encode_image(render_image(path, window=window, max_size=max_size, frame=frame), fmt)


# --- heatmaps --------------------------------------------------------------------------------

#: Inferno (matplotlib, perceptually uniform; van der Walt & Smith), 9 stops from 0 to 1.
_INFERNO_STOPS = np.array(
    [
        (0, 0, 4),
        (31, 12, 72),
        (85, 15, 109),
        (136, 34, 106),
        (186, 54, 85),
        (227, 89, 51),
        (249, 140, 10),
        (249, 201, 50),
        (252, 255, 164),
    ],
    dtype=np.float32,
)


def _colormap_lut() -> np.ndarray:
    x = np.linspace(0.0, 1.0, 256)
    stops = np.linspace(0.0, 1.0, len(_INFERNO_STOPS))
    lut = np.stack([np.interp(x, stops, _INFERNO_STOPS[:, c]) for c in range(3)], axis=-1)
    return np.rint(lut).astype(np.uint8)


COLORMAP = _colormap_lut()


def colorize_heatmap(gray: np.ndarray) -> np.ndarray:
    """An RGBA array: inferno colours, alpha proportional to the heatmap value (0 → transparent)."""
    gray = np.asarray(gray, dtype=np.uint8)
    rgba = np.empty((*gray.shape, 4), dtype=np.uint8)
    rgba[..., :3] = COLORMAP[gray]
    rgba[..., 3] = gray
    return rgba


def render_heatmap(path: Path) -> bytes:
    """The 8-bit grayscale heatmap PNG at *path* as an RGBA PNG overlay (model resolution; the
    viewer stretches it over the whole image, as the model saw the whole image resized)."""
    try:
        with Image.open(path) as source:
            gray = np.asarray(source.convert("L"))
    except OSError as exc:
        raise RenderError(f"cannot read heatmap: {type(exc).__name__}") from exc
    buffer = io.BytesIO()
    Image.fromarray(colorize_heatmap(gray), mode="RGBA").save(buffer, format="PNG")
    return buffer.getvalue()
