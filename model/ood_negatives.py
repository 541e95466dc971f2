"""Synthetic out-of-distribution inputs for the 'unsupported' class: noise, gradients, shapes,
natural-image-like textures, and phantoms broken in ways a mis-read or foreign image would be
(patch-shuffled, inverted, two domains spliced, re-sampled from a tiny matrix).

All work in model-input space: (S, S) float32 in [0, 1], letterboxed like real inputs."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage


def _smooth(rng: np.random.Generator, s: int, scale: float) -> np.ndarray:
    n = max(2, int(s / scale))
    small = rng.standard_normal((n, n)).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((s, s), Image.Resampling.BICUBIC))


def _norm(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x, [1, 99])
    return np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def _letterbox_random(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Real inputs are letterboxed: give negatives random aspect ratios too."""
    s = x.shape[0]
    if rng.random() < 0.5:
        return x
    keep = int(s * rng.uniform(0.4, 1.0))
    out = np.zeros_like(x)
    if rng.random() < 0.5:
        o = (s - keep) // 2
        out[o : o + keep] = np.asarray(
            Image.fromarray(x, mode="F").resize((s, keep), Image.Resampling.BILINEAR)
        )
    else:
        o = (s - keep) // 2
        out[:, o : o + keep] = np.asarray(
            Image.fromarray(x, mode="F").resize((keep, s), Image.Resampling.BILINEAR)
        )
    return out


def synthetic(rng: np.random.Generator, s: int) -> np.ndarray:
    kind = int(rng.integers(9))
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    if kind == 0:  # white noise, any level
        x = rng.uniform(0, 1) + rng.uniform(0.02, 0.5) * rng.standard_normal((s, s))
    elif kind == 1:  # uniform noise
        x = rng.uniform(0, 1, (s, s))
    elif kind == 2:  # 1/f natural-image-like texture
        x = sum(_smooth(rng, s, s / 2**k) * 0.7**k for k in range(1, 7))
        x = _norm(x)
    elif kind == 3:  # gradients
        a = rng.uniform(0, 2 * np.pi)
        x = np.cos(a) * xx + np.sin(a) * yy
        if rng.random() < 0.5:
            x = np.hypot(xx - rng.uniform(), yy - rng.uniform())
        x = _norm(x)
    elif kind == 4:  # random shapes
        x = np.full((s, s), rng.uniform(0, 1), np.float32)
        for _ in range(int(rng.integers(3, 30))):
            cx, cy, rx, ry = rng.uniform(0, 1, 4) * [1, 1, 0.3, 0.3]
            m = ((xx - cx) / (rx + 0.01)) ** 2 + ((yy - cy) / (ry + 0.01)) ** 2 < 1
            if rng.random() < 0.5:
                m = (np.abs(xx - cx) < rx) & (np.abs(yy - cy) < ry)
            x[m] = rng.uniform(0, 1)
    elif kind == 5:  # stripes / checkerboards
        f = rng.uniform(2, 40)
        x = np.sin(2 * np.pi * f * (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)))
        if rng.random() < 0.5:
            x = x * np.sin(2 * np.pi * f * xx)
        x = (x > 0).astype(np.float32) if rng.random() < 0.5 else (x + 1) / 2
    elif kind == 6:  # blank
        x = np.full((s, s), rng.uniform(0, 1), np.float32)
    elif kind == 7:  # piecewise-constant regions with edges (photo / document-like)
        labels = (_smooth(rng, s, rng.uniform(8, 40)) * 3).astype(np.int32)
        vals = rng.uniform(0, 1, 64)
        x = vals[np.clip(labels + 32, 0, 63)]
        x = ndimage.gaussian_filter(x, rng.uniform(0, 2))
    else:  # random blob "anatomy" inside a body-like ellipse
        x = np.zeros((s, s), np.float32)
        body = ((xx - 0.5) / rng.uniform(0.25, 0.48)) ** 2 + (
            (yy - 0.5) / rng.uniform(0.25, 0.48)
        ) ** 2 < 1
        x[body] = rng.uniform(0.2, 0.8)
        for _ in range(int(rng.integers(4, 25))):
            cx, cy = rng.uniform(0.2, 0.8, 2)
            rx, ry = rng.uniform(0.02, 0.2, 2)
            m = body & (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1)
            x[m] = rng.uniform(0, 1)
        x = ndimage.gaussian_filter(x, rng.uniform(0, 1.5)) + rng.normal(
            0, rng.uniform(0, 0.05), (s, s)
        )
    x = np.clip(np.asarray(x, np.float32), 0, 1)
    return _letterbox_random(rng, x)


def corrupted(rng: np.random.Generator, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A broken phantom: `a` and `b` are two model inputs (S, S) in [0, 1]."""
    s = a.shape[0]
    kind = int(rng.integers(4))
    if kind == 0:  # patch shuffle: local appearance right, global layout wrong
        n = int(rng.choice([4, 8, 16]))
        p = s // n
        tiles = a[: n * p, : n * p].reshape(n, p, n, p).transpose(0, 2, 1, 3).reshape(n * n, p, p)
        tiles = tiles[rng.permutation(n * n)]
        x = tiles.reshape(n, n, p, p).transpose(0, 2, 1, 3).reshape(n * p, n * p)
    elif kind == 1:  # inverted (a MONOCHROME1 image read as MONOCHROME2, or vice versa)
        x = 1.0 - a
    elif kind == 2:  # two images spliced
        x = a.copy()
        cut = int(s * rng.uniform(0.3, 0.7))
        if rng.random() < 0.5:
            x[:, cut:] = b[:, cut:]
        else:
            x[cut:] = b[cut:]
    else:  # a tiny matrix blown up (thumbnails, scout-like toy images)
        n = int(rng.choice([8, 12, 16, 24, 32]))
        small = np.asarray(Image.fromarray(a, mode="F").resize((n, n), Image.Resampling.BOX))
        x = np.asarray(
            Image.fromarray(small, mode="F").resize(
                (s, s), [Image.Resampling.NEAREST, Image.Resampling.BILINEAR][int(rng.integers(2))]
            )
        )
    return np.clip(x, 0, 1).astype(np.float32)
