"""Server-side rendering of stored frames to 8-bit PNG: window, downscale, encode, cache.

The browser gets a PNG no larger than `max_side` on its longest side; boxes stay in *source
pixel* coordinates because the viewer's SVG uses the source size as its viewBox. The integer
downscale factor is reported (X-Image-Scale) for any client that maps coordinates itself.
Downscaling happens before windowing so a 2,500 × 3,000 X-ray costs a fraction of its size.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from services.web.schemas import Preset
from services.web.web_settings import RENDER_CACHE_BYTES
from shared.dicom.pixels import read_frames

# (center, width) in physical units (HU for CT). `default` is the image's own VOI window;
# `auto` stretches the 1st–99th percentile.
CT_PRESETS: dict[str, tuple[str, str, tuple[float, float]]] = {
    "lung": ("Lung", "肺窗", (-600.0, 1500.0)),
    "mediastinum": ("Mediastinum", "纵隔窗", (40.0, 400.0)),
    "abdomen": ("Soft tissue", "软组织窗", (50.0, 350.0)),
    "bone": ("Bone", "骨窗", (400.0, 1800.0)),
    "brain": ("Brain", "脑窗", (40.0, 80.0)),
}
COMMON_PRESETS = [
    Preset(code="default", en="Default", zh="默认"),
    Preset(code="auto", en="Auto", zh="自动"),
]
PRESET_CODES = {"default", "auto", *CT_PRESETS}


class RenderError(ValueError):
    """The frame can't be rendered (missing file, frame out of range, undecodable)."""


def presets_for(modality: str | None) -> list[Preset]:
    if modality == "CT":
        return COMMON_PRESETS + [Preset(code=k, en=v[0], zh=v[1]) for k, v in CT_PRESETS.items()]
    return list(COMMON_PRESETS)


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
    max_side: int = 1024,
    center: float | None = None,
    width: float | None = None,
) -> Rendered:
    frames = read_frames(path)  # raises PixelDataUnsupported (a ValueError) with the reason
    if not 1 <= frame <= len(frames):
        raise RenderError(f"frame {frame} out of range 1..{len(frames)}")
    decoded = frames[frame - 1]
    rows, columns = decoded.pixels.shape
    small, factor = _downscale(decoded.pixels, max_side)
    window = (
        (center, max(width, 1.0))
        if center is not None and width is not None
        else _window(preset, decoded.window, small)
    )
    low = window[0] - window[1] / 2.0
    scaled = (small - np.float32(low)) * np.float32(255.0 / window[1])
    image = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")
    buffer = io.BytesIO()
    # Speed over size: this goes over a hospital LAN, and level 1 is several times faster.
    image.save(buffer, format="PNG", compress_level=1)
    return Rendered(buffer.getvalue(), factor, rows, columns, window)


class RenderCache:
    """Rendered PNGs by (file, frame, window, size), bounded by total bytes (LRU)."""

    def __init__(self, max_bytes: int = RENDER_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[object, ...], Rendered] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[object, ...]) -> Rendered | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple[object, ...], item: Rendered) -> None:
        if len(item.png) > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = item
            self._bytes += len(item.png)
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= len(evicted.png)


cache = RenderCache()
