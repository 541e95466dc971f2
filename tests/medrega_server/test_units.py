"""Image decoding and token counting on their own."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from services.medrega_server.images import ImageError, decode_data_url, decode_image_bytes
from services.medrega_server.tokens import count_tokens


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_8_bit_png_keeps_its_values_and_size() -> None:
    pixels = np.arange(300 * 200, dtype=np.uint32).reshape(200, 300) % 256
    raw = encoded(Image.fromarray(pixels.astype(np.uint8)), "PNG")
    url = "data:image/png;base64," + base64.b64encode(raw).decode()
    image = decode_data_url(url, max_pixels=10**6)
    assert (image.width, image.height, image.format) == (300, 200, "PNG")
    assert image.window == (127.5, 255.0)
    assert image.pixels.dtype == np.float32
    np.testing.assert_array_equal(image.pixels, pixels)


def test_16_bit_png_uses_the_16_bit_range() -> None:
    pixels = (np.arange(64 * 80).reshape(64, 80) * 13).astype(np.uint16)
    image = decode_image_bytes(encoded(Image.fromarray(pixels), "PNG"), max_pixels=10**6)
    assert image.window == (32767.5, 65535.0)
    np.testing.assert_array_equal(image.pixels, pixels)


def test_rgb_jpeg_becomes_gray() -> None:
    rgb = Image.new("RGB", (100, 70), (90, 90, 90))
    image = decode_image_bytes(encoded(rgb, "JPEG"), max_pixels=10**6)
    assert (image.width, image.height, image.format) == (100, 70, "JPEG")
    assert image.pixels.shape == (70, 100)
    assert abs(float(image.pixels.mean()) - 90) < 2


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://pacs.local/image.png", "not fetched"),
        ("HTTPS://pacs.local/image.png", "not fetched"),
        ("data:image/png,rawbytes", "base64 data URL"),
        ("data:image/png;base64,abc$", "not valid base64"),
    ],
)
def test_bad_urls(url: str, fragment: str) -> None:
    with pytest.raises(ImageError, match=fragment):
        decode_data_url(url, max_pixels=10**6)


def test_other_formats_and_huge_images_are_refused() -> None:
    with pytest.raises(ImageError, match="GIF"):
        decode_image_bytes(encoded(Image.new("L", (10, 10)), "GIF"), max_pixels=10**6)
    with pytest.raises(ImageError, match="above"):
        decode_image_bytes(encoded(Image.new("L", (200, 200)), "PNG"), max_pixels=10_000)


def test_tokens() -> None:
    assert count_tokens("The right lung is unremarkable.") == 6
    assert count_tokens("右肺未见明显异常。") == 9
    # Tags are one token each, as InternVL's special tokens.
    assert count_tokens("<ref>right lung</ref><box>[[1, 2, 3, 4]]</box>") == 17
    assert count_tokens("<ref>右肺</ref><box>[[1, 2, 3, 4]]</box>：") == 18
