"""The image of a chat request: a `data:` URL → grayscale pixels for the model.

Clients send what `shared.dicom.render.render_frame` produces: an already windowed 8-bit PNG
(or a JPEG). Its gray values are display values, so the model gets them as float32 with the
window that maps them 1:1 (center 127.5, width 255; 65535 for 16-bit PNGs). The original width
and height are kept because MedRegA's text boxes are relative to them.

The server never fetches a URL: it runs inside a hospital network and must not be turned into
a proxy, so only inline `data:` URLs are accepted.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

ACCEPTED_FORMATS = {"PNG", "JPEG"}
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,", re.I)


class ImageError(ValueError):
    """The request's image can't be used; the message is safe to send back to the client."""


@dataclass(frozen=True)
class RequestImage:
    pixels: np.ndarray  # float32 (rows, cols), display values
    window: tuple[float, float]  # (center, width) that maps them to the full display range
    width: int  # columns of the image as sent
    height: int  # rows
    format: str  # PNG or JPEG


def decode_data_url(url: str, *, max_pixels: int) -> RequestImage:
    """Decode a `data:image/png;base64,...` (or JPEG) URL; raises ImageError."""
    stripped = url.strip()
    lowered = stripped[:16].lower()
    if lowered.startswith(("http://", "https://")):
        raise ImageError(
            "image URLs are not fetched by this server; send the image inline as a "
            "data:image/png;base64,... URL"
        )
    match = _DATA_URL.match(stripped)
    if match is None:
        raise ImageError("image_url must be a base64 data URL (data:image/png;base64,...)")
    try:
        raw = base64.b64decode(stripped[match.end() :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError("the image data URL is not valid base64") from exc
    return decode_image_bytes(raw, max_pixels=max_pixels)


def decode_image_bytes(raw: bytes, *, max_pixels: int) -> RequestImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            if image.format not in ACCEPTED_FORMATS:
                raise ImageError(f"image format {image.format} is not accepted; send PNG or JPEG")
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"image of {width}x{height} pixels is above {max_pixels} pixels")
            image.load()
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError("the image can't be decoded as PNG or JPEG") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("the image is too large to decode") from exc
    pixels, window = _grayscale(image)
    return RequestImage(pixels, window, width, height, str(image.format))


def _grayscale(image: Image.Image) -> tuple[np.ndarray, tuple[float, float]]:
    """float32 gray values and the window that shows them as they are."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale PNG (Pillow reads it as I;16 or I): the full 16-bit range.
        values = np.asarray(image, dtype=np.float32)
        return values, (65535.0 / 2.0, 65535.0)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        return values, ((low + high) / 2.0, max(high - low, 1.0))
    gray = image if image.mode == "L" else image.convert("L")  # RGB, palette, LA, 1: luminance
    return np.asarray(gray, dtype=np.float32), (127.5, 255.0)
