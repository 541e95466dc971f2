"""3D building blocks for axial CT/MR series: organs as ellipsoid-like solids whose in-plane
cross-section scales with height, and spherical lesions."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from model.phantoms.raster import Canvas, Mask, ShapeFn, ellipse, ellipse_bbox

# A structure counts as visible on a slice when its box is at least this big: GT boxes of a few
# pixels are noise, not anatomy.
MIN_VISIBLE_MM = 4.0
MIN_VISIBLE_AREA_MM2 = 30.0
# A lesion is marked on a slice only where its cross-section is a fair share of its diameter.
LESION_MIN_SECTION = 0.45


@dataclass
class Solid:
    """Ellipsoid-like solid: in-plane ellipse (cx, cy, rx, ry, angle) scaled by (1 - t^p)^(1/p)
    where t = |z - z0| / hz; p > 2 gives flatter, more cylindrical ends."""

    cx: float
    cy: float
    rx: float
    ry: float
    z0: float
    hz: float
    angle: float = 0.0
    p: float = 2.0

    def factor(self, z: float) -> float:
        t = abs(z - self.z0) / self.hz
        if t >= 1.0:
            return 0.0
        return float((1.0 - t**self.p) ** (1.0 / self.p))

    def section(self, z: float, grow_mm: float = 0.0) -> ShapeFn | None:
        f = self.factor(z)
        if f <= 0.0:
            return None
        return ellipse(self.cx, self.cy, self.rx * f + grow_mm, self.ry * f + grow_mm, self.angle)

    def bbox(self, grow_mm: float = 0.0) -> tuple[float, float, float, float]:
        return ellipse_bbox(self.cx, self.cy, self.rx + grow_mm, self.ry + grow_mm)


@dataclass
class Sphere:
    code: str
    region_code: str
    x: float
    y: float
    z: float
    r: float  # mm
    # its own value (HU) instead of the renderer's rule for its code: only training's extra
    # studies set it (model.hard_abdomen); every seed's phantom leaves it None
    value: float | None = None

    def radius_at(self, z: float) -> float:
        dz = abs(z - self.z)
        return math.sqrt(self.r**2 - dz**2) if dz < self.r else 0.0

    def marked_at(self, z: float) -> bool:
        return self.radius_at(z) >= LESION_MIN_SECTION * self.r


def visible_box(m: Mask, spacing: tuple[float, float]) -> tuple[float, float, float, float] | None:
    b = m.box()
    if b is None:
        return None
    if (b[2] - b[0]) * spacing[1] < MIN_VISIBLE_MM or (b[3] - b[1]) * spacing[0] < MIN_VISIBLE_MM:
        return None
    if m.area() * spacing[0] * spacing[1] < MIN_VISIBLE_AREA_MM2:
        return None
    return b


def point_in_solid(
    rng: np.random.Generator, solid: Solid, margin_mm: float, zmax_t: float = 0.6
) -> tuple[float, float, float]:
    """A random point well inside a solid (so a lesion there reads as intra-organ)."""
    for _ in range(200):
        z = solid.z0 + float(rng.uniform(-zmax_t, zmax_t)) * solid.hz
        f = solid.factor(z)
        rx, ry = solid.rx * f - margin_mm, solid.ry * f - margin_mm
        if rx <= 1 or ry <= 1:
            continue
        a = float(rng.uniform(0, 2 * math.pi))
        rr = math.sqrt(float(rng.uniform(0, 1))) * 0.9
        u, v = rr * rx * math.cos(a), rr * ry * math.sin(a)
        th = math.radians(solid.angle)
        x = solid.cx + u * math.cos(th) - v * math.sin(th)
        y = solid.cy + u * math.sin(th) + v * math.cos(th)
        return x, y, z
    return solid.cx, solid.cy, solid.z0


def slice_positions(z_lo: float, z_hi: float, n: int) -> list[float]:
    """Slice centres from head to feet (z decreasing), evenly covering [z_lo, z_hi]."""
    step = (z_hi - z_lo) / n
    return [z_hi - step * (i + 0.5) for i in range(n)]


def paint_sphere(cv: Canvas, sphere: Sphere, z: float, value: float, mode: str = "set") -> Mask:
    r = sphere.radius_at(z)
    if r <= 0:
        return Mask(0, 0, np.zeros((0, 0), dtype=bool))
    m = cv.mask(ellipse(sphere.x, sphere.y, r, r), ellipse_bbox(sphere.x, sphere.y, r, r))
    cv.paint(m, value, mode)
    return m
