"""Synthetic chest CT volumes in Hounsfield units, with nodule label maps; seeded and reproducible.

Not anatomy, but enough of its structure that a nodule segmenter cannot win on trivia: air around a
body with a subcutaneous fat layer over soft tissue (~ +40 HU), a patient table, two lungs
(~ -850 HU with smooth texture) that taper to the apices and sit on diaphragm domes, the heart
indenting them, a vertebral body and ribs (bone), and pulmonary vessels branching from each hilum
and tapering outwards: vessels running across the slice plane look like round dots in a single
slice, the classic nodule mimic, and only their continuity from slice to slice tells them apart.

Nodules are solid ellipsoids (+0 to +80 HU, random axis ratios and orientation) of given
equivalent-sphere diameters (4–20 mm), some juxtapleural: centred just inside the pleura so that
the chest wall cuts them flat. Every voxel's value is the partial-volume average over the voxel
(2 × 2 × 3 sub-samples), so a 2.5 mm slice blurs a nodule's poles as a scanner's would, and a voxel
is labelled when at least half of it is nodule inside the lung (the half-maximum boundary that
volumetry uses; for a juxtapleural nodule, its visible part). Then quantum noise (correlated
in-plane, 8–25 HU) is added and values are rounded to whole HU in [-1024, 3071] as a 12-bit CT
stores them.

Axes are (z, y, x) = (slice, row, column); slice 0 is the most inferior, row 0 is anterior and
the table lies at the posterior side. Positions are in mm from the centre of voxel (0, 0, 0). The
chest keeps its size in mm (260–300 mm from the lung bases to the apices): a volume of fewer slices
is a slab of it, somewhere between the bases and the apices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

Arr = np.ndarray
Rng = np.random.Generator

AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
LUNG_HU = -850.0
BONE_HU = 700.0
HU_MIN, HU_MAX = -1024.0, 3071.0
#: The benchmark-size volume: 0.7 mm pixels, 2.5 mm slices, 512 × 512 × 120 (358 × 358 × 300 mm).
BENCHMARK_SHAPE = (120, 512, 512)
BENCHMARK_SPACING = (2.5, 0.7, 0.7)
#: Equivalent-sphere diameters (mm) the generator draws nodules from by default.
NODULE_DIAMETERS_MM = (4.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0)
#: Partial-volume sub-samples per voxel along (z, y, x).
_SUBSAMPLES = (3, 2, 2)


@dataclass(frozen=True)
class Nodule:
    """One nodule: label value, centre (mm, z/y/x), semi-axes (mm) and rotation of the ellipsoid."""

    label: int
    center_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    rotation: tuple[tuple[float, float, float], ...]  # 3×3, rows = the ellipsoid's axes in (z, y, x)
    hu: float
    juxtapleural: bool

    @property
    def diameter_mm(self) -> float:
        """Equivalent-sphere diameter of the whole ellipsoid (before the pleura cuts it)."""
        a, b, c = self.semi_axes_mm
        return 2.0 * float((a * b * c) ** (1.0 / 3.0))


@dataclass(frozen=True)
class CTPhantom:
    volume: np.ndarray  # float32 (z, y, x), whole HU in [-1024, 3071]
    labels: np.ndarray  # uint8 (z, y, x): 0 background, k = voxels of nodules[k - 1]
    spacing: tuple[float, float, float]  # mm (z, y, x)
    nodules: tuple[Nodule, ...]
    lungs: np.ndarray = field(repr=False)  # bool (z, y, x)

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.volume.shape
        return int(z), int(y), int(x)

    def nodule_volume_mm3(self, label: int) -> float:
        return float((self.labels == label).sum()) * float(np.prod(self.spacing))


def synth_ct(
    rng: Rng,
    *,
    shape: Sequence[int] = BENCHMARK_SHAPE,
    spacing: Sequence[float] = BENCHMARK_SPACING,
    nodule_diameters_mm: Sequence[float] | None = None,
    n_nodules: int | None = None,
    juxtapleural_fraction: float = 0.3,
    noise_hu: float | None = None,
) -> CTPhantom:
    """One chest CT phantom; the same generator state gives the same phantom.

    Nodule diameters are *nodule_diameters_mm* when given, else *n_nodules* (default 1–4) drawn
    from :data:`NODULE_DIAMETERS_MM`. The body fills about 85 % of the field of view's width
    whatever its size, so small training volumes hold a whole (smaller) chest.
    """
    nz, ny, nx = (int(v) for v in shape)
    sz, sy, sx = (float(v) for v in spacing)
    if min(nz, ny, nx) < 8 or ny < 32 or nx < 32:
        raise ValueError(f"shape {tuple(shape)} is too small for a chest")
    if min(sz, sy, sx) <= 0:
        raise ValueError(f"spacing {tuple(spacing)} must be positive")
    if nodule_diameters_mm is None:
        count = int(rng.integers(1, 5)) if n_nodules is None else int(n_nodules)
        nodule_diameters_mm = [float(rng.choice(NODULE_DIAMETERS_MM)) for _ in range(count)]
    if len(nodule_diameters_mm) > 255:
        raise ValueError("at most 255 nodules fit a uint8 label map")
    grid = _Grid(nz, ny, nx, sz, sy, sx)
    anatomy = _anatomy(grid, rng)
    tissue = np.zeros(grid.shape, np.float32)  # soft-tissue fraction inside the lungs (vessels)
    _vessels(grid, anatomy, rng, tissue)
    nodule_hu = np.zeros(grid.shape, np.float32)
    nodule_frac = np.zeros(grid.shape, np.float32)
    labels = np.zeros(grid.shape, np.uint8)
    nodules = _place_nodules(
        grid, anatomy, rng, nodule_diameters_mm, juxtapleural_fraction, nodule_frac, nodule_hu, labels
    )
    lungs = anatomy.lungs
    volume = anatomy.hu
    in_lung = volume[lungs]
    vessel_part = tissue[lungs] * (SOFT_TISSUE_HU - in_lung)
    nodule_part = nodule_hu[lungs] - nodule_frac[lungs] * in_lung  # hu_out holds fraction × HU
    volume[lungs] = in_lung + np.maximum(vessel_part, nodule_part)
    sigma = float(rng.uniform(8.0, 25.0)) if noise_hu is None else float(noise_hu)
    volume += _noise(rng, grid.shape, sigma)
    np.clip(np.rint(volume), HU_MIN, HU_MAX, out=volume)
    return CTPhantom(volume=volume, labels=labels, spacing=(sz, sy, sx), nodules=tuple(nodules), lungs=lungs)


def synth_ct_dataset(n: int, seed: int, **options: object) -> list[CTPhantom]:
    """``n`` phantoms; phantom ``i`` depends on ``seed`` and ``i`` only (the i-th child seed)."""
    children = np.random.SeedSequence(seed).spawn(n)
    return [synth_ct(np.random.default_rng(child), **options) for child in children]  # type: ignore[arg-type]


# --- geometry ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    nz: int
    ny: int
    nx: int
    sz: float
    sy: float
    sx: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.nz, self.ny, self.nx

    @property
    def spacing(self) -> np.ndarray:
        return np.array([self.sz, self.sy, self.sx])

    @property
    def extent(self) -> np.ndarray:
        """Size in mm from the first to the last voxel centre, per axis."""
        return (np.array(self.shape) - 1) * self.spacing

    def to_index(self, mm: np.ndarray) -> np.ndarray:
        return np.asarray(mm, dtype=np.float64) / self.spacing


@dataclass
class _Anatomy:
    hu: np.ndarray  # float32 (z, y, x)
    lungs: np.ndarray  # bool (z, y, x)
    centre: tuple[float, float]  # body centre (y, x) mm
    lung_centres: list[tuple[float, float]]  # (y, x) mm, right then left
    hila: list[tuple[float, float, float]]  # (z, y, x) mm


def _anatomy(g: _Grid, rng: Rng) -> _Anatomy:
    """Body, fat, table, lungs, heart, spine and ribs; one 2D cross-section scaled along z."""
    fov_x, fov_y = g.nx * g.sx, g.ny * g.sy
    yy = (np.arange(g.ny, dtype=np.float32) * g.sy)[:, None]
    xx = (np.arange(g.nx, dtype=np.float32) * g.sx)[None, :]
    cy, cx = fov_y * rng.uniform(0.47, 0.52), fov_x * rng.uniform(0.48, 0.52)
    a = 0.5 * min(fov_x, fov_y * 1.35) * rng.uniform(0.8, 0.88)  # lateral semi-axis of the body
    b = a * rng.uniform(0.64, 0.74)  # antero-posterior
    # t: 0 at the lowest lung base, 1 at the apices, of a chest 260–300 mm tall; a shorter volume
    # is a slab of it (anatomy keeps its size in mm whatever the number of slices)
    height = rng.uniform(260.0, 300.0)
    span = g.extent[0] / height
    t_lo = rng.uniform(-0.15, 1.1 - span) if span < 1.2 else 0.5 - span / 2
    t = (t_lo + np.arange(g.nz) * g.sz / height).astype(np.float32)
    body_scale = 1.0 - 0.12 * t**2  # the chest narrows towards the shoulders' base
    fat = rng.uniform(0.04, 0.09)  # subcutaneous fat, fraction of the semi-axis

    hu = np.full(g.shape, AIR_HU, np.float32)
    lungs = np.zeros(g.shape, bool)
    dy, dx = (yy - cy) / b, (xx - cx) / a
    r2 = dy * dy + dx * dx  # (ny, nx)
    table_y = cy + b * 1.02 + 4.0
    table = (yy >= table_y) & (yy <= table_y + 6.0) & (xx >= 0)  # wider than any field of view
    hu[:, np.broadcast_to(table, (g.ny, g.nx))] = 150.0

    lung_w, lung_h = a * rng.uniform(0.34, 0.4), b * rng.uniform(0.62, 0.72)
    lung_centres = [(cy - 0.05 * b, cx - a * 0.47), (cy - 0.05 * b, cx + a * 0.47)]
    heart = (cy - b * 0.2, cx + a * 0.12, a * 0.3, b * 0.42)
    base = [rng.uniform(0.03, 0.12), rng.uniform(0.06, 0.15)]  # diaphragm domes' lowest levels
    apex = rng.uniform(0.9, 1.0)
    for k in range(g.nz):
        s = float(body_scale[k])
        body = r2 <= s * s
        inner = r2 <= (s * (1.0 - fat)) ** 2
        sl = hu[k]
        sl[body] = FAT_HU
        sl[inner] = SOFT_TISSUE_HU
        lung_k = _lung_slice(yy, xx, float(t[k]), lung_centres, lung_w * s, lung_h * s, base, apex)
        size = math.sqrt(max(0.0, 1.0 - (float(t[k]) / 0.6) ** 2)) if t[k] > 0 else 1.0
        if size > 0.05:  # the heart sits on the diaphragm, left and anterior, and indents the lungs
            hy, hx, ha, hb = heart
            heart_k = ((yy - hy) / (hb * size)) ** 2 + ((xx - hx) / (ha * size)) ** 2 <= 1.0
            lung_k &= ~heart_k
        lung_k &= inner
        lungs[k] = lung_k
    hu[lungs] = LUNG_HU + 25.0 * _smooth_noise(rng, g, sigma_mm=6.0)[lungs]
    _bones(g, rng, hu, lungs, yy, xx, (cy, cx), a, b, body_scale, fat)
    # each hilum lies just medial to its lung, in the mediastinum: the vessels' common origin is
    # hidden in soft tissue and only their branches cross the lung
    hila = [
        ((rng.uniform(0.45, 0.6) - t_lo) * height, ly + 0.1 * lung_h, lx + np.sign(cx - lx) * lung_w * 1.1)
        for ly, lx in lung_centres
    ]
    return _Anatomy(hu, lungs, (cy, cx), lung_centres, hila)


def _lung_slice(
    yy: Arr,
    xx: Arr,
    t: float,
    centres: list[tuple[float, float]],
    w: float,
    h: float,
    base: list[float],
    apex: float,
) -> Arr:
    """Both lungs' cross-sections at height t: superellipses that shrink towards the apex, above a
    diaphragm dome (highest under the lung's centre)."""
    out = np.zeros(np.broadcast_shapes(yy.shape, xx.shape), bool)
    for side, (ly, lx) in enumerate(centres):
        if t >= apex:
            continue
        taper = math.sqrt(max(0.0, 1.0 - (max(0.0, t - 0.45) / (apex - 0.45)) ** 2)) if t > 0.45 else 1.0
        if taper <= 0.05:
            continue
        u, v = (xx - lx) / (w * taper), (yy - ly) / (h * taper)
        shape = np.abs(u) ** 2.5 + np.abs(v) ** 2.5 <= 1.0
        dome = base[side] + 0.22 * np.clip(1.0 - u * u - v * v, 0.0, 1.0)  # dome rises in the middle
        out |= shape & (t >= dome)
    return out


def _bones(
    g: _Grid,
    rng: Rng,
    hu: Arr,
    lungs: Arr,
    yy: Arr,
    xx: Arr,
    centre: tuple[float, float],
    a: float,
    b: float,
    body_scale: Arr,
    fat: float,
) -> None:
    """A vertebral body behind the mediastinum and ribs inside the body wall (they cross slices
    obliquely, so a rib appears in a slice as a short bony bar that moves from slice to slice)."""
    cy, cx = centre
    vy, vr = cy + b * 0.55, a * 0.11
    vert = (yy - vy) ** 2 + (xx - cx) ** 2 <= vr * vr
    canal = (yy - (vy + vr * 1.3)) ** 2 + (xx - cx) ** 2 <= (vr * 0.45) ** 2
    hu[:, vert] = 350.0
    hu[:, canal] = 10.0
    rib_period = rng.uniform(22.0, 28.0)  # mm between successive ribs along z
    z_mm = np.arange(g.nz) * g.sz
    angles = np.linspace(-0.85 * np.pi, 0.85 * np.pi, 18)
    for k in range(g.nz):
        s = float(body_scale[k]) * (1.0 - fat * 1.5)
        for ang in angles:
            phase = (z_mm[k] + 8.0 * abs(ang)) / rib_period
            if (phase - math.floor(phase)) > 0.35:  # a rib is ~35 % of the period thick along z
                continue
            ry, rx = cy - b * s * math.cos(ang), cx + a * s * math.sin(ang)
            rib = ((yy - ry) / 4.0) ** 2 + ((xx - rx) / 9.0) ** 2 <= 1.0
            rib &= ~lungs[k]
            hu[k][rib] = BONE_HU


def _vessels(g: _Grid, anatomy: _Anatomy, rng: Rng, tissue: Arr) -> None:
    """Vessel trees from each hilum: a few lobar trunks that branch in two, five times, tapering
    from 5–7 mm to about 1 mm across; rendered inside the lungs only."""
    for hz, hy, hx in anatomy.hila:
        outward = 1.0 if hx > anatomy.centre[1] else -1.0  # away from the mediastinum
        for _ in range(int(rng.integers(5, 8))):
            direction = rng.normal(size=3)
            direction[0] *= 1.6  # more vessels run up and down than across
            direction[2] = outward * (abs(direction[2]) + 0.3)
            # the trunks leave the hilum at different levels: no single knot of vessels
            origin = np.array([hz, hy, hx]) + rng.uniform(-1.0, 1.0, 3) * np.array([25.0, 12.0, 3.0])
            _branch(g, anatomy, rng, tissue, origin, direction, rng.uniform(2.5, 3.5), 0)


def _branch(
    g: _Grid, anatomy: _Anatomy, rng: Rng, tissue: Arr, start: Arr, direction: Arr, radius: float, depth: int
) -> None:
    direction = direction / max(float(np.linalg.norm(direction)), 1e-6)
    length = rng.uniform(20.0, 35.0) * (0.85**depth)
    end = start + direction * length
    _capsule(g, tissue, anatomy.lungs, start, end, radius, radius * 0.8)
    if depth < 5 and radius > 0.7:
        for _ in range(2):
            turn = direction + rng.normal(scale=0.45, size=3)
            _branch(g, anatomy, rng, tissue, end, turn, radius * 0.72, depth + 1)


def _capsule(g: _Grid, out: Arr, inside: Arr, p0: Arr, p1: Arr, r0: float, r1: float) -> None:
    """Max-accumulate the soft-tissue fraction of a tapered tube from p0 to p1 (mm) into ``out``."""
    lo = np.floor(g.to_index(np.minimum(p0, p1) - max(r0, r1) - 1.0)).astype(int)
    hi = np.ceil(g.to_index(np.maximum(p0, p1) + max(r0, r1) + 1.0)).astype(int) + 1
    lo, hi = np.maximum(lo, 0), np.minimum(hi, g.shape)
    if np.any(hi <= lo):
        return
    zz, yy, xx = (np.arange(lo[i], hi[i], dtype=np.float32) * g.spacing[i] for i in range(3))
    pz, py, px = zz[:, None, None] - p0[0], yy[None, :, None] - p0[1], xx[None, None, :] - p0[2]
    d = p1 - p0
    tt = np.clip((pz * d[0] + py * d[1] + px * d[2]) / max(float(d @ d), 1e-6), 0.0, 1.0)
    dist = np.sqrt((pz - tt * d[0]) ** 2 + (py - tt * d[1]) ** 2 + (px - tt * d[2]) ** 2)
    radius = r0 + (r1 - r0) * tt
    # partial volume across ~ one in-plane voxel; thin vessels stay faint, as on a real scan
    width = max(g.sy, g.sx)
    frac = np.clip(0.5 - (dist - radius) / width, 0.0, 1.0) * np.minimum(1.0, 2.0 * radius / width)
    view = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    frac *= inside[view]
    np.maximum(out[view], frac.astype(np.float32), out=out[view])


# --- nodules ----------------------------------------------------------------------------------------


def _place_nodules(
    g: _Grid,
    anatomy: _Anatomy,
    rng: Rng,
    diameters: Sequence[float],
    juxtapleural_fraction: float,
    frac_out: Arr,
    hu_out: Arr,
    labels: Arr,
) -> list[Nodule]:
    nodules: list[Nodule] = []
    for diameter in sorted((float(d) for d in diameters), reverse=True):  # big ones first: they fit
        axes = np.exp(rng.normal(scale=0.1, size=3))
        axes /= float(np.prod(axes)) ** (1.0 / 3.0)  # equivalent-sphere diameter stays `diameter`
        semi = axes * diameter / 2.0
        rot = _random_rotation(rng)
        jux = bool(rng.random() < juxtapleural_fraction)
        centre = _nodule_centre(g, anatomy, rng, float(semi.max()), jux, nodules)
        if centre is None:
            continue  # no room left (a tiny volume): fewer nodules rather than overlapping ones
        label = len(nodules) + 1
        hu = float(rng.uniform(0.0, 80.0))
        if not _render_ellipsoid(g, anatomy.lungs, centre, semi, rot, hu, label, frac_out, hu_out, labels):
            continue  # pragma: no cover - a centre is always inside the lung
        nodules.append(
            Nodule(
                label=label,
                center_mm=(float(centre[0]), float(centre[1]), float(centre[2])),
                semi_axes_mm=(float(semi[0]), float(semi[1]), float(semi[2])),
                rotation=tuple((float(r[0]), float(r[1]), float(r[2])) for r in rot),
                hu=hu,
                juxtapleural=jux,
            )
        )
    return nodules


def _nodule_centre(
    g: _Grid, anatomy: _Anatomy, rng: Rng, radius: float, juxtapleural: bool, placed: list[Nodule]
) -> Arr | None:
    """A centre inside a lung: ``radius`` + 2 mm clear of the pleura (checked along 26 directions),
    or for a juxtapleural nodule 30–70 % of the radius inside the costal pleura; never within
    4 mm of another nodule and never cut by the volume's edges."""
    lungs = anatomy.lungs
    idx = np.argwhere(lungs[:: max(1, lungs.shape[0] // 24), ::4, ::4])
    if idx.size == 0:
        return None
    idx = idx * np.array([max(1, lungs.shape[0] // 24), 4, 4])
    dirs = np.array(
        [(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) != (0, 0, 0)]
    )
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    for _ in range(400):
        c = idx[int(rng.integers(0, len(idx)))] * g.spacing + rng.uniform(-1, 1, 3) * g.spacing
        if juxtapleural:
            c = _toward_pleura(g, lungs, c, rng, radius)
            if c is None:
                continue
        margin = radius + 1.0
        if np.any(c < margin) or np.any(c > g.extent - margin):
            continue
        if not juxtapleural and not all(_inside(g, lungs, c + d * (radius + 2.0)) for d in dirs):
            continue
        if any(
            np.linalg.norm(c - np.array(n.center_mm)) < radius + max(n.semi_axes_mm) + 4.0 for n in placed
        ):
            continue
        return c
    return None


def _toward_pleura(g: _Grid, lungs: Arr, c: Arr, rng: Rng, radius: float) -> Arr | None:
    """Walk in-plane from ``c`` in a random direction to the lung's edge; the centre goes back
    inside by 30–70 % of the radius, so the chest wall cuts the nodule."""
    angle = rng.uniform(0.0, 2.0 * np.pi)
    step = np.array([0.0, math.sin(angle), math.cos(angle)]) * min(g.sy, g.sx)
    p = c.copy()
    if not _inside(g, lungs, p):
        return None
    for _ in range(2000):
        q = p + step
        if not _inside(g, lungs, q):
            depth = rng.uniform(0.3, 0.7) * radius
            out = p - step / np.linalg.norm(step) * depth
            return out if _inside(g, lungs, out) else None
        p = q
    return None


def _inside(g: _Grid, mask: Arr, mm: Arr) -> bool:
    i = np.rint(g.to_index(mm)).astype(int)
    if np.any(i < 0) or np.any(i >= np.array(g.shape)):
        return False
    return bool(mask[i[0], i[1], i[2]])


def _render_ellipsoid(
    g: _Grid,
    lungs: Arr,
    centre: Arr,
    semi: Arr,
    rot: Arr,
    hu: float,
    label: int,
    frac_out: Arr,
    hu_out: Arr,
    labels: Arr,
) -> int:
    """Partial-volume fraction (sub-sampled), HU × fraction, and the label of voxel centres inside;
    returns how many voxels got the label."""
    reach = float(semi.max()) + 1.0
    lo = np.maximum(np.floor(g.to_index(centre - reach)).astype(int), 0)
    hi = np.minimum(np.ceil(g.to_index(centre + reach)).astype(int) + 1, g.shape)
    axes = [np.arange(lo[i], hi[i], dtype=np.float64) * g.spacing[i] - centre[i] for i in range(3)]
    inv = rot / semi[:, None]  # rows: axis direction / semi-axis length

    def inside(offset: tuple[float, float, float]) -> Arr:
        p = [axes[i] + offset[i] for i in range(3)]
        q = (
            inv[:, 0, None, None, None] * p[0][None, :, None, None]
            + inv[:, 1, None, None, None] * p[1][None, None, :, None]
            + inv[:, 2, None, None, None] * p[2][None, None, None, :]
        )
        return np.asarray((q * q).sum(axis=0) <= 1.0)

    subs = [(np.arange(n) + 0.5) / n - 0.5 for n in _SUBSAMPLES]
    frac = np.zeros([hi[i] - lo[i] for i in range(3)], np.float32)
    for oz in subs[0]:
        for oy in subs[1]:
            for ox in subs[2]:
                frac += inside((oz * g.sz, oy * g.sy, ox * g.sx))
    frac /= float(np.prod(_SUBSAMPLES))
    view = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    in_lung = lungs[view]
    frac *= in_lung
    better = frac > frac_out[view]
    frac_out[view] = np.where(better, frac, frac_out[view])
    hu_out[view] = np.where(better, frac * hu, hu_out[view])
    mine = (frac >= 0.5) & (labels[view] == 0)
    labels[view] = np.where(mine, np.uint8(label), labels[view])
    return int(mine.sum())


def _random_rotation(rng: Rng) -> Arr:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return np.asarray(q * np.sign(np.diag(r)))


# --- noise ------------------------------------------------------------------------------------------


def _smooth_noise(rng: Rng, g: _Grid, sigma_mm: float) -> Arr:
    """Smooth unit-variance texture, made on a coarse grid and upsampled (cheap at any size)."""
    step = max(1, int(sigma_mm / max(g.sy, g.sx) / 2))
    zstep = max(1, int(sigma_mm / g.sz / 2))
    coarse_shape = (-(-g.nz // zstep), -(-g.ny // step), -(-g.nx // step))
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape, dtype=np.float32), 1.0)
    coarse /= max(float(coarse.std()), 1e-6)
    fine = np.repeat(np.repeat(np.repeat(coarse, zstep, 0), step, 1), step, 2)[: g.nz, : g.ny, : g.nx]
    # a box filter the size of a coarse cell turns the blocks into a (bi)linear interpolation
    return np.asarray(ndimage.uniform_filter(fine, size=(zstep, step, step)), dtype=np.float32)


def _noise(rng: Rng, shape: tuple[int, int, int], sigma: float) -> Arr:
    """Quantum noise of standard deviation ``sigma`` HU, correlated over ~1 pixel in-plane (the
    reconstruction kernel), independent between slices."""
    white = rng.standard_normal(shape, dtype=np.float32)
    smooth = ndimage.uniform_filter(white, size=(1, 2, 2))  # 2×2 box: std halves
    smooth *= np.float32(sigma * 2.0)
    return smooth
