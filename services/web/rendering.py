"""The web side of image rendering: window presets offered per modality and a byte-bounded
PNG cache. The rendering itself (window, downscale, encode) is `shared.dicom.render`, shared
with the `mllm` backend so the model sees what the radiologist sees.

The browser gets a PNG no larger than `max_side` on its longest side; boxes stay in *source
pixel* coordinates because the viewer's SVG uses the source size as its viewBox. The integer
downscale factor is reported (X-Image-Scale) for any client that maps coordinates itself.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from services.web.schemas import Preset
from services.web.web_settings import RENDER_CACHE_BYTES
from shared.dicom.render import CT_PRESETS, PRESET_CODES, Rendered, RenderError, render_frame

__all__ = ["CT_PRESETS", "PRESET_CODES", "RenderError", "Rendered", "render_frame", "presets_for"]

COMMON_PRESETS = [
    Preset(code="default", en="Default", zh="默认"),
    Preset(code="auto", en="Auto", zh="自动"),
]


def presets_for(modality: str | None) -> list[Preset]:
    if modality == "CT":
        return COMMON_PRESETS + [Preset(code=k, en=v[0], zh=v[1]) for k, v in CT_PRESETS.items()]
    return list(COMMON_PRESETS)


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
