"""Stored DICOM frame → windowed 8-bit PNG, the one rendering for people and for models.

The review UI shows these PNGs, and the `mllm` backend sends the same rendering to a served
MedRegA, so a radiologist and the model see the same pixels for the same window. Downscaling
(integer block mean) happens before windowing so a 2,500 × 3,000 X-ray costs a fraction of its
size; `max_side=None` keeps the source size.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from shared.dicom.pixels import DecodedFrame, FrameOutOfRange, display_values, read_frame

# (center, width) in physical units (HU for CT). `default` is the image's own VOI window;
# `auto` stretches the 1st–99th percentile.
CT_PRESETS: dict[str, tuple[str, str, tuple[float, float]]] = {
    "lung": ("Lung", "肺窗", (-600.0, 1500.0)),
    "mediastinum": ("Mediastinum", "纵隔窗", (40.0, 400.0)),
    "abdomen": ("Soft tissue", "软组织窗", (50.0, 350.0)),
    "bone": ("Bone", "骨窗", (400.0, 1800.0)),
    "brain": ("Brain", "脑窗", (40.0, 80.0)),
}
PRESET_CODES = {"default", "auto", *CT_PRESETS}


class RenderError(ValueError):
    """The frame can't be rendered (missing file, frame out of range, undecodable)."""


@dataclass(frozen=True)
class Rendered:
    png: bytes
    scale: int  # source pixels per output pixel
    rows: int  # source size
    columns: int
    window: tuple[float, float]


def _downscale(pixels: np.ndarray, max_side: int) -> tuple[np.ndarray, int]:
    factor = max(1, math.ceil(max(pixels.shape) / max_side))
    if factor == 1:
        return pixels, 1
    rows = pixels.shape[0] // factor * factor
    cols = pixels.shape[1] // factor * factor
    blocks = pixels[:rows, :cols].reshape(rows // factor, factor, cols // factor, factor)
    return blocks.mean(axis=(1, 3), dtype=np.float32), factor


def _window(preset: str, own: tuple[float, float], pixels: np.ndarray) -> tuple[float, float]:
    if preset in CT_PRESETS:
        return CT_PRESETS[preset][2]
    if preset == "auto":
        low, high = np.percentile(pixels, (1.0, 99.0))
        return float((low + high) / 2), float(max(high - low, 1.0))
    return own


def render_frame(
    path: Path,
    frame: int,
    *,
    preset: str = "default",
    max_side: int | None = 1024,
    center: float | None = None,
    width: float | None = None,
) -> Rendered:
    try:  # only the frame shown is decoded; PixelDataUnsupported (a ValueError) says why not
        decoded = read_frame(path, frame)
    except FrameOutOfRange as exc:
        raise RenderError(str(exc)) from exc
    return render_decoded(decoded, preset=preset, max_side=max_side, center=center, width=width)


def render_decoded(
    decoded: DecodedFrame,
    *,
    preset: str = "default",
    max_side: int | None = 1024,
    center: float | None = None,
    width: float | None = None,
) -> Rendered:
    """An already decoded frame → PNG (the model backends hold decoded frames)."""
    rows, columns = decoded.pixels.shape
    small, factor = _downscale(decoded.pixels, max_side) if max_side else (decoded.pixels, 1)
    window = (
        (center, max(width, 1.0))
        if center is not None and width is not None
        else _window(preset, decoded.window, small)
    )
    # The image's own window keeps its VOI LUT Function (e.g. SIGMOID); presets are linear.
    own = preset == "default" and center is None and width is None
    greys = display_values(small, *window, decoded.voi_function if own else "LINEAR")
    image = Image.fromarray(np.rint(greys * 255.0).astype(np.uint8), mode="L")
    buffer = io.BytesIO()
    # Speed over size: this goes over a hospital LAN, and level 1 is several times faster.
    image.save(buffer, format="PNG", compress_level=1)
    return Rendered(buffer.getvalue(), factor, rows, columns, window)
