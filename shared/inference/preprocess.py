"""The one preprocessing function shared by training and serving.

physical pixels (HU, MR signal, X-ray values; MONOCHROME1 already inverted by the reader) →
[0, 1] by the modality's own rule (`normalise`) → resize keeping the aspect ratio → centred in
a square letterbox of the model's input size, padded with 0.

What a site happens to put in the header must not change what the model sees, so the header's
window is only used where the standard makes it part of the image (X-ray's VOI LUT):
- CT: Hounsfield units through the model's own fixed windows (a lung window and a soft-tissue
  window blended into one channel); the header window is ignored.
- MR: the image's own robust percentiles; the header window is ignored.
- X-ray and anything else (a rendered PNG, unknown modality): the VOI window the header gives
  (what the modality means to be shown), then stretched between the image's own robust
  percentiles, so a shifted or narrower window changes contrast and clipping, not the level.

`LetterboxTransform` is the exact affine map between source pixel coordinates and model-frame
coordinates. Coordinates are continuous pixel *edges*: (0, 0) is the top-left corner of the
first pixel and (cols, rows) the bottom-right corner of the last, so a box (x1, y1, x2, y2) maps
by x' = x * scale_x + offset_x, y' = y * scale_y + offset_y. The resize below maps image edges to
edges (PIL's convention), which is what makes this map exact rather than off by half a pixel.

numpy + PIL only: the worker does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

DEFAULT_INPUT_SIZE = 256
PAD_VALUE = 0.0
# CT: the model's own windows (center, width, weight), blended into one channel.
CT_WINDOWS = ((-600.0, 1500.0, 0.4), (40.0, 400.0, 0.6))
# Robust range of an image: these percentiles map to 0 and 1.
PERCENTILES = (1.0, 99.0)
CT_MODALITIES = frozenset({"CT"})
MR_MODALITIES = frozenset({"MR"})
# What the exported model's metadata names (preprocessing.normalisation) for this rule; models
# exported before it (medrega-ref ≤ 1.1.0) name none and get the header window only.
NORMALISATION = "modality-v2"
LEGACY_NORMALISATION = "header-window-v1"
POLICY = (
    "normalise by modality: CT = 0.4*window(-600,1500) + 0.6*window(40,400) on HU (header "
    "window ignored); MR = stretch p1..p99 of the image (header window ignored); X-ray/other = "
    "header VOI window, then stretch p1..p99 of the windowed image; clip [0,1]; resize "
    "keep-aspect (PIL bilinear, antialiased, edge-aligned) so the long side = size; centre in "
    "size x size letterbox padded with 0"
)


@dataclass(frozen=True)
class LetterboxTransform:
    """Affine map source pixels ↔ model frame (pixels of the size × size input)."""

    src_rows: int
    src_cols: int
    size: int
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    def to_model(self, boxes: np.ndarray) -> np.ndarray:
        """(..., 4) source-pixel boxes (x1, y1, x2, y2) → model-frame pixels."""
        b = np.asarray(boxes, dtype=np.float64)
        out = np.empty_like(b)
        out[..., 0::2] = b[..., 0::2] * self.scale_x + self.offset_x
        out[..., 1::2] = b[..., 1::2] * self.scale_y + self.offset_y
        return out

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """(..., 4) model-frame pixel boxes → source pixels (inverse of `to_model`)."""
        b = np.asarray(boxes, dtype=np.float64)
        out = np.empty_like(b)
        out[..., 0::2] = (b[..., 0::2] - self.offset_x) / self.scale_x
        out[..., 1::2] = (b[..., 1::2] - self.offset_y) / self.scale_y
        return out

    def to_model_normalised(self, boxes: np.ndarray) -> np.ndarray:
        """Source pixels → model frame in [0, 1] units (what the network reads and writes)."""
        return self.to_model(boxes) / self.size

    def from_model_normalised(self, boxes: np.ndarray) -> np.ndarray:
        """Model frame in [0, 1] units → source pixels."""
        return self.to_source(np.asarray(boxes, dtype=np.float64) * self.size)

    def clip_to_source(self, boxes: np.ndarray) -> np.ndarray:
        b = np.array(boxes, dtype=np.float64)
        b[..., 0::2] = np.clip(b[..., 0::2], 0, self.src_cols)
        b[..., 1::2] = np.clip(b[..., 1::2], 0, self.src_rows)
        return b

    @property
    def content_box(self) -> tuple[float, float, float, float]:
        """Where the image sits inside the letterbox, model-frame pixels."""
        x1, y1, x2, y2 = self.to_model(np.array([0, 0, self.src_cols, self.src_rows]))
        return (float(x1), float(y1), float(x2), float(y2))


def letterbox_transform(rows: int, cols: int, size: int = DEFAULT_INPUT_SIZE) -> LetterboxTransform:
    if rows < 1 or cols < 1:
        raise ValueError(f"image must have at least one pixel, got {rows}x{cols}")
    scale = size / max(rows, cols)
    new_w = min(size, max(1, round(cols * scale)))
    new_h = min(size, max(1, round(rows * scale)))
    return LetterboxTransform(
        src_rows=rows,
        src_cols=cols,
        size=size,
        scale_x=new_w / cols,
        scale_y=new_h / rows,
        offset_x=float((size - new_w) // 2),
        offset_y=float((size - new_h) // 2),
    )


def apply_window(pixels: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear window to [0, 1] (values outside clip)."""
    if not np.isfinite(center) or not np.isfinite(width) or width <= 0:
        raise ValueError(f"invalid window center/width {center}/{width}")
    lo = center - width / 2.0
    out = (np.asarray(pixels, dtype=np.float32) - np.float32(lo)) / np.float32(width)
    return np.clip(out, 0.0, 1.0, out=out)


def ct_curve(hu: np.ndarray) -> np.ndarray:
    """Hounsfield units → [0, 1] through the model's fixed CT windows."""
    hu = np.asarray(hu, dtype=np.float32)
    out = np.zeros(hu.shape, np.float32)
    for center, width, weight in CT_WINDOWS:
        out += np.float32(weight) * apply_window(hu, center, width)
    return out


def robust_range(values: np.ndarray) -> tuple[float, float]:
    """The image's own (low, high): percentiles on a subsample (fast on 3000² X-rays)."""
    flat = np.asarray(values, dtype=np.float32).ravel()
    step = max(1, flat.size // 65536)
    sample = flat[::step]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(sample, PERCENTILES)
    if hi - lo <= 1e-6 * max(1.0, abs(float(hi))):
        lo, hi = float(sample.min()), float(sample.max())
    return float(lo), float(hi)


def stretch(values: np.ndarray) -> np.ndarray:
    """Linear map of the image's robust range to [0, 1], clipped (a flat image → zeros)."""
    lo, hi = robust_range(values)
    arr = np.asarray(values, dtype=np.float32)
    if hi - lo <= 0:
        return np.zeros(arr.shape, np.float32)
    out = (arr - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def normalise(
    pixels: np.ndarray, center: float, width: float, modality: str | None = None
) -> np.ndarray:
    """Physical pixels → [0, 1] float32 by the modality's rule (see the module docstring)."""
    kind = (modality or "").upper()
    if kind in CT_MODALITIES:
        return ct_curve(pixels)
    if kind in MR_MODALITIES:
        return stretch(pixels)
    return stretch(apply_window(pixels, center, width))


def preprocess(
    pixels: np.ndarray,
    center: float,
    width: float,
    size: int = DEFAULT_INPUT_SIZE,
    modality: str | None = None,
    normalisation: str = NORMALISATION,
) -> tuple[np.ndarray, LetterboxTransform]:
    """One 2D image → (size, size) float32 model input and its exact transform. `modality` is
    the DICOM Modality (CT, MR, DX, CR, ...); None means display values (a rendered PNG).
    `normalisation` is the rule the model was trained with (its ONNX metadata says which)."""
    arr = np.asarray(pixels)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {arr.shape}")
    rows, cols = arr.shape
    t = letterbox_transform(rows, cols, size)
    if normalisation == LEGACY_NORMALISATION:
        windowed = apply_window(arr, center, width)
    elif normalisation == NORMALISATION:
        windowed = normalise(arr, center, width, modality)
    else:
        raise ValueError(f"unknown normalisation {normalisation!r}")
    new_w = round(t.scale_x * cols)
    new_h = round(t.scale_y * rows)
    if (new_w, new_h) == (cols, rows):
        resized = windowed
    else:
        resized = np.asarray(
            Image.fromarray(windowed, mode="F").resize((new_w, new_h), Image.Resampling.BILINEAR)
        )
    out = np.full((size, size), PAD_VALUE, dtype=np.float32)
    ox, oy = int(t.offset_x), int(t.offset_y)
    out[oy : oy + new_h, ox : ox + new_w] = resized
    return out, t


def preprocess_batch(
    images: list[tuple[np.ndarray, float, float]] | list[tuple[np.ndarray, float, float, str]],
    size: int = DEFAULT_INPUT_SIZE,
) -> tuple[np.ndarray, list[LetterboxTransform]]:
    """[(pixels, center, width[, modality]), ...] → (N, 1, size, size) float32 and one
    transform each."""
    batch = np.empty((len(images), 1, size, size), dtype=np.float32)
    transforms = []
    for i, item in enumerate(images):
        pixels, center, width = item[0], float(item[1]), float(item[2])
        modality = str(item[3]) if len(item) > 3 else None
        batch[i, 0], t = preprocess(np.asarray(pixels), center, width, size, modality)
        transforms.append(t)
    return batch, transforms
