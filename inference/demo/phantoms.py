"""Synthetic chest radiograph phantoms, seeded and reproducible (numpy only).

Not anatomy, but enough of its structure that a lesion detector cannot win on trivia: a body outline
over air, two lung fields with diaphragm domes and tapering apices, mediastinum, heart, spine,
posterior ribs and clavicles, vessel markings radiating from the hila, and a detector (exposure,
contrast curve, blur, noise, 12-bit quantisation) that varies from image to image. Bilateral nipple
shadows (a classic nodule mimic) appear in some images and are never a finding.

Findings, each with its ground-truth mask:

- ``consolidation``: a patchy, mottled opacity with air bronchograms, confined to one lung field;
- ``nodule_mass``: one or two round opacities of five sizes (≈ 11–35 mm across on a 350 mm field).

Raw values are MONOCHROME2-like: higher = more attenuation = brighter, 12 bits stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

FINDINGS: tuple[str, ...] = ("consolidation", "nodule_mass")
Arr = np.ndarray
Rng = np.random.Generator
#: Field of view of the phantom, for a plausible Pixel Spacing when it is written as DICOM.
FIELD_OF_VIEW_MM = 350.0
BITS_STORED = 12


@dataclass(frozen=True)
class Phantom:
    image: np.ndarray  # uint16 H×W, raw detector values (MONOCHROME2-like), 12 bits stored
    masks: dict[str, np.ndarray]  # bool H×W per finding code (all False when absent)
    labels: dict[str, bool]
    lungs: np.ndarray = field(repr=False)  # bool H×W, both lung fields

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        return FIELD_OF_VIEW_MM / self.image.shape[0], FIELD_OF_VIEW_MM / self.image.shape[1]

    def to_display(self) -> np.ndarray:
        """Raw values → float32 [0, 1] by min/max, as :func:`inference.dicom_io.load_image` does
        for an image without a window."""
        img = self.image.astype(np.float32)
        lo, hi = float(img.min()), float(img.max())
        return (img - lo) / max(hi - lo, 1.0)


def synth_dataset(n: int, seed: int, size: int = 512) -> list[Phantom]:
    """``n`` phantoms in a fixed cycle of 7: 2 negatives, 2 consolidation, 2 nodule, 1 both.

    Phantom ``i`` depends on ``seed`` and ``i`` only (not on ``n``): its generator is the ``i``-th
    child of ``SeedSequence(seed)``.
    """
    children = np.random.SeedSequence(seed).spawn(n)
    cycle = [
        (False, False),
        (True, False),
        (False, True),
        (True, True),
        (False, False),
        (True, False),
        (False, True),
    ]
    return [
        synth_chest(np.random.default_rng(child), consolidation=c, nodule=m, size=size)
        for child, (c, m) in zip(children, (cycle[i % len(cycle)] for i in range(n)), strict=True)
    ]


def synth_chest(rng: np.random.Generator, *, consolidation: bool, nodule: bool, size: int = 512) -> Phantom:
    """One phantom of ``size``×``size`` pixels; the same generator state gives the same phantom."""
    if size < 64:
        raise ValueError("size must be at least 64 pixels")
    s = size
    yy, xx = _grid(s)  # v (rows), u (cols) in [0, 1)
    cx = 0.5 + rng.uniform(-0.04, 0.04)
    top = rng.uniform(0.12, 0.2)  # lung apices
    scale = rng.uniform(0.88, 1.08)  # patient size / magnification

    body = _superellipse(xx, yy, cx, 0.58, rng.uniform(0.40, 0.47) * scale, 0.62, 3.0, soft=0.012)
    # Soft tissue is not uniform: large, smooth variations of thickness over the whole body.
    density = body * (rng.uniform(0.50, 0.60) + _smooth_noise(rng, s, 0.06 * s) * rng.uniform(0.015, 0.035))

    heart = _superellipse(
        xx,
        yy,
        cx + 0.055 * scale,
        rng.uniform(0.6, 0.66),
        rng.uniform(0.12, 0.16) * scale,
        rng.uniform(0.11, 0.14),
        2.0,
        soft=0.008,
    )
    lungs_soft = np.zeros((s, s), np.float32)
    for side in (-1, 1):
        lungs_soft = np.maximum(lungs_soft, _lung(xx, yy, rng, cx, side, top, scale))
    lungs_soft *= 1.0 - 0.8 * heart  # the heart displaces the lung behind it
    lungs = lungs_soft > 0.5
    left_half = xx < cx
    lung_masks = [lungs & left_half, lungs & ~left_half]
    depth = rng.uniform(0.26, 0.34)
    base = np.clip((yy - top) / 0.6, 0.0, 1.0)
    density -= lungs_soft * depth * (1.0 - 0.25 * base * base)  # bases look denser (soft tissue)

    # Mediastinum, spine and heart put attenuation back between and over the lungs.
    density += _superellipse(xx, yy, cx, 0.45, 0.05 * scale, 0.35, 4.0, soft=0.006) * 0.2
    spine = _superellipse(xx, yy, cx, 0.55, 0.028 * scale, 0.6, 6.0, soft=0.006)
    density += spine * (0.10 + 0.03 * np.cos(2 * np.pi * yy / 0.045))
    density += heart * rng.uniform(0.04, 0.08)
    density += _ribs(xx, yy, rng, cx, top, scale) * body
    density += _clavicles(xx, yy, rng, cx, top) * body
    density += _vessels(s, rng, cx, scale) * lungs_soft
    if rng.random() < 0.3:  # nipple shadows: a bilateral nodule mimic, never a finding
        density += _nipples(xx, yy, rng, cx, scale, s)

    masks = {code: np.zeros((s, s), bool) for code in FINDINGS}
    if consolidation:
        opacity, mask = _consolidation(xx, yy, rng, lung_masks, lungs_soft, s)
        density += opacity
        masks["consolidation"] = mask
    if nodule:
        opacity, mask = _nodules(xx, yy, rng, lungs, s)
        density += opacity
        masks["nodule_mass"] = mask

    image = _detector(density, rng, s)
    return Phantom(image=image, masks=masks, labels={k: bool(v.any()) for k, v in masks.items()}, lungs=lungs)


@lru_cache(maxsize=4)
def _grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / np.float32(s)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _superellipse(xx: Arr, yy: Arr, cx: float, cy: float, a: float, b: float, p: float, soft: float) -> Arr:
    r = np.abs((xx - cx) / a) ** p + np.abs((yy - cy) / b) ** p
    return _sigmoid((1.0 - r) / max(soft * p / min(a, b), 1e-3)).astype(np.float32)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -30, 30))), dtype=np.float32)


def _lung(xx: Arr, yy: Arr, rng: Rng, cx: float, side: int, top: float, scale: float) -> Arr:
    """A lung field: tapering apex, diaphragm dome below, soft edges. ``side`` -1 = image left."""
    half_w = rng.uniform(0.12, 0.15) * scale * (0.9 if side > 0 else 1.0)  # heart side is narrower
    centre = cx + side * (0.055 * scale + half_w)
    bottom = rng.uniform(0.66, 0.74) + (0.02 if side > 0 else 0.0)
    t = np.clip((yy - top) / (bottom - top), 0.0, 1.0)
    width = half_w * (0.35 + 0.65 * np.sqrt(t))  # narrow apex, widest at the base
    lateral = 1.0 - np.abs(xx - centre) / np.maximum(width, 1e-3)
    dome = bottom - 0.06 * (1.0 - ((xx - centre) / half_w) ** 2)  # dome highest mid-lung
    vertical = np.minimum(yy - top, dome - yy)
    out: Arr = _sigmoid(lateral / 0.06) * _sigmoid(vertical / 0.008)
    return out


def _ribs(xx: Arr, yy: Arr, rng: Rng, cx: float, top: float, scale: float) -> Arr:
    """Posterior ribs: bands curving down laterally, both sides, within the thorax."""
    spacing = rng.uniform(0.052, 0.062)
    half = rng.uniform(0.28, 0.36) / 2  # half a rib's thickness, as a fraction of a period
    d = np.abs(xx - cx)
    phase = (yy - top + 0.02 - (0.9 * (d - 0.03) ** 2) / scale - 0.25 * d) / spacing
    z = (phase - np.floor(phase) - 0.5) / half
    z *= z
    band = np.exp(-z)
    extent = (phase > 0) & (phase < 8.5) & (d > 0.03) & (d < 0.33 * scale)
    return (band * extent * rng.uniform(0.035, 0.065)).astype(np.float32)


def _clavicles(xx: Arr, yy: Arr, rng: Rng, cx: float, top: float) -> Arr:
    out = np.zeros_like(xx)
    for side in (-1, 1):
        d = side * (xx - cx)
        line = top + rng.uniform(-0.02, 0.03) + 0.02 - 0.12 * (d - 0.05)
        band = np.exp(-(((yy - line) / 0.014) ** 2)) * ((d > 0.03) & (d < 0.3))
        out += band * rng.uniform(0.08, 0.13)
    return out.astype(np.float32)


def _vessels(s: int, rng: Rng, cx: float, scale: float) -> Arr:
    """Branching-ish vessel markings: tapering line segments radiating from each hilum."""
    out = np.zeros((s, s), np.float32)
    for side in (-1, 1):
        hx, hy = (cx + side * 0.09 * scale) * s, rng.uniform(0.42, 0.48) * s
        for _ in range(rng.integers(8, 13)):
            angle = rng.uniform(-1.3, 1.3) + (0.0 if side > 0 else np.pi)
            length = rng.uniform(0.08, 0.2) * s
            x0, y0 = hx, hy
            for _seg in range(2):
                angle += rng.normal(0, 0.25)
                x1, y1 = x0 + np.cos(angle) * length / 2, y0 + np.sin(angle) * length / 2 * 1.3
                width = rng.uniform(0.003, 0.006) * s
                _segment(out, x0, y0, x1, y1, width, rng.uniform(0.025, 0.05))
                x0, y0 = x1, y1
    return out


def _segment(out: Arr, x0: float, y0: float, x1: float, y1: float, width: float, amp: float) -> None:
    s = out.shape[0]
    pad = 3 * width
    c0, c1 = int(max(min(x0, x1) - pad, 0)), int(min(max(x0, x1) + pad + 1, s))
    r0, r1 = int(max(min(y0, y1) - pad, 0)), int(min(max(y0, y1) + pad + 1, s))
    if c1 <= c0 or r1 <= r0:
        return
    yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32)
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
    dist2 = (xx - x0 - t * dx) ** 2 + (yy - y0 - t * dy) ** 2
    out[r0:r1, c0:c1] += amp * np.exp(-dist2 / (2 * width * width))


def _consolidation(
    xx: Arr, yy: Arr, rng: Rng, lung_masks: list[Arr], lungs_soft: Arr, s: int
) -> tuple[Arr, Arr]:
    """A patchy opacity in one lung: an irregular envelope (lobulated by smooth noise) filled with a
    mottled texture crossed by air bronchograms (aerated bronchi, dark branching lines), blurred and
    cut by the lung edge like an airspace process."""
    lung = lung_masks[int(rng.integers(0, 2))]
    cy, cx = _point_in(lung, rng, lower_bias=True)
    a, b = rng.uniform(0.06, 0.11), rng.uniform(0.06, 0.12)
    r2 = ((xx - cx / s) / a) ** 2 + ((yy - cy / s) / b) ** 2
    r2 = r2 * np.exp(0.35 * _smooth_noise(rng, s, sigma=0.03 * s))  # lobulated outline
    env = _sigmoid((1.0 - r2) / 0.15)
    mottle = np.clip(0.75 + 0.25 * _smooth_noise(rng, s, sigma=0.007 * s), 0.3, 1.2)
    bronchi = np.zeros((s, s), np.float32)
    for _ in range(int(rng.integers(2, 5))):
        angle = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.6, 1.2) * max(a, b) * s
        x0, y0 = cx - np.cos(angle) * length / 2, cy - np.sin(angle) * length / 2
        x1, y1 = cx + np.cos(angle) * length / 2, cy + np.sin(angle) * length / 2
        _segment(bronchi, x0, y0, x1, y1, rng.uniform(0.003, 0.005) * s, 1.0)
    field_ = env * mottle * (1.0 - 0.55 * np.clip(bronchi, 0.0, 1.0))
    field_ = _blur(field_, 0.004 * s) * lungs_soft
    field_ /= max(float(field_.max()), 1e-6)
    opacity = field_ * rng.uniform(0.2, 0.32)
    return opacity.astype(np.float32), (env > 0.5) & (lungs_soft > 0.5)


def _nodules(xx: Arr, yy: Arr, rng: Rng, lungs: Arr, s: int) -> tuple[Arr, Arr]:
    """One (sometimes two) round opacities, radius 1.8–4.5 % of the field (≈ 13–32 mm across on
    350 mm), each inside a lung."""
    opacity = np.zeros((s, s), np.float32)
    mask = np.zeros((s, s), bool)
    for _ in range(1 if rng.random() < 0.8 else 2):
        r = float(rng.choice([0.018, 0.024, 0.03, 0.037, 0.045])) * rng.uniform(0.9, 1.1)
        cy, cx = _point_in(lungs, rng, margin=r * s)
        d = np.sqrt((xx - cx / s) ** 2 + (yy - cy / s) ** 2) / r
        # projected thickness of a ball with a soft rim (a smoothstep over the outer 15 %)
        rim = np.clip((1.0 - d) / 0.15, 0.0, 1.0)
        ball = np.sqrt(np.clip(1.0 - d * d, 0.0, None)) * 0.6 + 0.4 * rim * rim * (3 - 2 * rim)
        amp = rng.uniform(0.18, 0.3) * (1.2 if r < 0.022 else 1.0)
        opacity += ball.astype(np.float32) * amp
        mask |= d <= 1.0
    return opacity, mask


def _nipples(xx: Arr, yy: Arr, rng: Rng, cx: float, scale: float, s: int) -> Arr:
    out = np.zeros((s, s), np.float32)
    cy = rng.uniform(0.6, 0.68)
    r = rng.uniform(0.01, 0.014)
    amp = rng.uniform(0.04, 0.08)
    for side in (-1, 1):
        px = cx + side * rng.uniform(0.2, 0.26) * scale
        d2 = ((xx - px) ** 2 + (yy - cy) ** 2) / (r * r)
        out += np.exp(-d2 * d2).astype(np.float32) * amp
    return out


def _point_in(mask: Arr, rng: Rng, margin: float = 0.0, lower_bias: bool = False) -> tuple[int, int]:
    """A random pixel of ``mask`` at least ``margin`` pixels from its edge (checked at 8 points)."""
    ys, xs = np.nonzero(mask)
    s = mask.shape[0]
    for _ in range(200):
        i = int(rng.integers(0, ys.size))
        y, x = int(ys[i]), int(xs[i])
        if lower_bias and rng.random() < 0.5 and y < np.median(ys):
            continue
        ok = True
        for ang in np.linspace(0, 2 * np.pi, 8, endpoint=False):
            py, px = int(round(y + margin * np.sin(ang))), int(round(x + margin * np.cos(ang)))
            if not (0 <= py < s and 0 <= px < s and mask[py, px]):
                ok = False
                break
        if ok:
            return y, x
    i = int(rng.integers(0, ys.size))
    return int(ys[i]), int(xs[i])


def _smooth_noise(rng: np.random.Generator, s: int, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    field_ = _blur(rng.standard_normal((s, s), dtype=np.float32), sigma)
    return (field_ / max(float(field_.std()), 1e-6)).astype(np.float32)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur by FFT (periodic edges: fine for fields that fade out before the border)."""
    if sigma <= 0:
        return img
    s0, s1 = img.shape
    fy = np.fft.fftfreq(s0)[:, None]
    fx = np.fft.rfftfreq(s1)[None, :]
    transfer = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx * fx + fy * fy))
    return np.fft.irfft2(np.fft.rfft2(img) * transfer, s=img.shape).astype(np.float32)


def _detector(density: np.ndarray, rng: np.random.Generator, s: int) -> np.ndarray:
    """Contrast curve, unsharpness, correlated and white noise, exposure, 12-bit quantisation."""
    d = np.clip(density, 0.0, None)
    d = d ** rng.uniform(0.8, 1.25)
    d = _blur(d, rng.uniform(0.4, 1.0) * s / 512)
    d = d + _smooth_noise(rng, s, sigma=0.01 * s) * rng.uniform(0.004, 0.012)
    # Per-pixel quantum noise grows as the pixel shrinks (std ∝ 1/pixel pitch), so phantoms of any
    # size look alike once resized to the model's input.
    d = d + rng.standard_normal((s, s), dtype=np.float32) * rng.uniform(0.006, 0.02) * (s / 512)
    gain = rng.uniform(2400.0, 3600.0)
    offset = rng.uniform(80.0, 500.0)
    raw = np.clip(offset + d * gain, 0, 2**BITS_STORED - 1)
    return np.asarray(np.round(raw), dtype=np.uint16)
