"""Resolution-independent rasterisation: shapes are defined in patient millimetres, the canvas
maps its pixels to them, so one scene renders identically at any matrix size.

Patient frame: x to the image's right (the patient's left), y down the image (for radiographs
towards the feet, for axial slices towards the patient's back), origin at the body centre.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from model.phantoms.types import Box

ShapeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Mask:
    """A boolean mask living on a sub-window of the canvas (saves memory on 3000 px images)."""

    r0: int
    c0: int
    mask: np.ndarray

    def box(self) -> Box | None:
        rows = np.flatnonzero(self.mask.any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(self.mask.any(axis=0))
        return (
            float(self.c0 + cols[0]),
            float(self.r0 + rows[0]),
            float(self.c0 + cols[-1] + 1),
            float(self.r0 + rows[-1] + 1),
        )

    def area(self) -> int:
        return int(self.mask.sum())


class Canvas:
    """A float32 image plus the pixel ↔ patient-mm mapping (with in-plane rotation)."""

    def __init__(
        self,
        rows: int,
        cols: int,
        spacing_mm: tuple[float, float],
        offset_mm: tuple[float, float] = (0.0, 0.0),
        rotation_deg: float = 0.0,
        fill: float = 0.0,
    ) -> None:
        self.rows, self.cols = rows, cols
        self.dr, self.dc = spacing_mm
        self.ox, self.oy = offset_mm
        self.theta = math.radians(rotation_deg)
        self.img = np.full((rows, cols), fill, dtype=np.float32)

    def _image_mm(self, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cos, sin = math.cos(self.theta), math.sin(self.theta)
        return px * cos - py * sin + self.ox, px * sin + py * cos + self.oy

    def window(self, bbox_mm: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
        """Pixel window (r0, r1, c0, c1) covering a patient-frame bbox, clipped to the image."""
        x0, y0, x1, y1 = bbox_mm
        xs, ys = self._image_mm(np.array([x0, x1, x0, x1]), np.array([y0, y0, y1, y1]))
        c0 = int(math.floor(xs.min() / self.dc + self.cols / 2 - 1))
        c1 = int(math.ceil(xs.max() / self.dc + self.cols / 2 + 1))
        r0 = int(math.floor(ys.min() / self.dr + self.rows / 2 - 1))
        r1 = int(math.ceil(ys.max() / self.dr + self.rows / 2 + 1))
        return max(r0, 0), min(r1, self.rows), max(c0, 0), min(c1, self.cols)

    def grids(self, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray]:
        """Patient-frame mm coordinates of the pixel centres in a window."""
        yi = ((np.arange(r0, r1, dtype=np.float32) + 0.5 - self.rows / 2) * self.dr - self.oy)[
            :, None
        ]
        xi = ((np.arange(c0, c1, dtype=np.float32) + 0.5 - self.cols / 2) * self.dc - self.ox)[
            None, :
        ]
        cos, sin = math.cos(self.theta), math.sin(self.theta)
        return xi * cos + yi * sin, -xi * sin + yi * cos

    def mask(self, fn: ShapeFn, bbox_mm: tuple[float, float, float, float]) -> Mask:
        r0, r1, c0, c1 = self.window(bbox_mm)
        if r1 <= r0 or c1 <= c0:
            return Mask(0, 0, np.zeros((0, 0), dtype=bool))
        x, y = self.grids(r0, r1, c0, c1)
        return Mask(r0, c0, np.asarray(fn(x, y), dtype=bool))

    def field(
        self, fn: ShapeFn, bbox_mm: tuple[float, float, float, float]
    ) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """Evaluate a float field on the window of a bbox."""
        r0, r1, c0, c1 = self.window(bbox_mm)
        if r1 <= r0 or c1 <= c0:
            return None
        x, y = self.grids(r0, r1, c0, c1)
        return (slice(r0, r1), slice(c0, c1)), np.asarray(fn(x, y), dtype=np.float32)

    def paint(self, m: Mask, value: float | np.ndarray, mode: str = "set") -> None:
        if m.mask.size == 0:
            return
        region = self.img[m.r0 : m.r0 + m.mask.shape[0], m.c0 : m.c0 + m.mask.shape[1]]
        val = value[m.mask] if isinstance(value, np.ndarray) else value
        if mode == "set":
            region[m.mask] = val
        elif mode == "add":
            region[m.mask] += val
        else:
            raise ValueError(f"unknown paint mode {mode!r}")

    def add_field(self, fn: ShapeFn, bbox_mm: tuple[float, float, float, float]) -> None:
        got = self.field(fn, bbox_mm)
        if got is not None:
            (rs, cs), values = got
            self.img[rs, cs] += values

    def texture(self, m: Mask, field: np.ndarray) -> np.ndarray:
        """The part of a full-canvas field under a mask's window (for textured paints)."""
        return field[m.r0 : m.r0 + m.mask.shape[0], m.c0 : m.c0 + m.mask.shape[1]]


def rotate(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ang_deg: float):
    a = math.radians(ang_deg)
    dx, dy = x - cx, y - cy
    return dx * math.cos(a) + dy * math.sin(a), -dx * math.sin(a) + dy * math.cos(a)


def ellipse(cx: float, cy: float, rx: float, ry: float, ang_deg: float = 0.0) -> ShapeFn:
    def fn(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u, v = rotate(x, y, cx, cy, ang_deg)
        return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0

    return fn


def superellipse(
    cx: float, cy: float, rx: float, ry: float, power: float, ang_deg: float = 0.0
) -> ShapeFn:
    def fn(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u, v = rotate(x, y, cx, cy, ang_deg)
        return np.abs(u / rx) ** power + np.abs(v / ry) ** power <= 1.0

    return fn


def ellipse_bbox(cx: float, cy: float, rx: float, ry: float) -> tuple[float, float, float, float]:
    r = max(rx, ry)  # a rotated ellipse always fits in the circle of its major radius
    return (cx - r, cy - r, cx + r, cy + r)


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], scale_px: float, octaves: int = 1
) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise: white noise at low resolution, upsampled bilinearly."""
    rows, cols = shape
    out = np.zeros(shape, dtype=np.float32)
    amp, scale = 1.0, max(scale_px, 1.0)
    for _ in range(octaves):
        lr = max(int(rows / scale) + 2, 2)
        lc = max(int(cols / scale) + 2, 2)
        small = rng.standard_normal((lr, lc)).astype(np.float32)
        big = np.asarray(Image.fromarray(small, mode="F").resize((cols, rows), Image.BILINEAR))
        out += amp * big
        amp *= 0.5
        scale = max(scale / 2.0, 1.0)
    return out


def finish(
    img: np.ndarray, rng: np.random.Generator, blur_px: float, noise_sigma: float
) -> np.ndarray:
    """Detector blur then noise; both given at the rendered resolution."""
    if blur_px > 0.3:
        img = ndimage.gaussian_filter(img, blur_px, mode="nearest")
    if noise_sigma > 0:
        img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise_sigma)
    return img.astype(np.float32, copy=False)
