"""The preprocessing transform is exact: boxes round-trip, and a bright rectangle in the source
lands where the transform says, for square, non-square and odd-sized images."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.inference.preprocess import (
    DEFAULT_INPUT_SIZE,
    apply_window,
    ct_curve,
    letterbox_transform,
    preprocess,
    preprocess_batch,
)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(1, 4000),
    cols=st.integers(1, 4000),
    size=st.sampled_from([64, 128, 255, 256, 384]),
    box=st.tuples(*[st.floats(0, 1) for _ in range(4)]),
)
def test_box_round_trip(rows: int, cols: int, size: int, box: tuple[float, ...]) -> None:
    t = letterbox_transform(rows, cols, size)
    src = np.array([box[0] * cols, box[1] * rows, box[2] * cols, box[3] * rows])
    back = t.to_source(t.to_model(src))
    np.testing.assert_allclose(back, src, rtol=0, atol=1e-9 * max(rows, cols))
    back_n = t.from_model_normalised(t.to_model_normalised(src))
    np.testing.assert_allclose(back_n, src, rtol=0, atol=1e-9 * max(rows, cols))


@pytest.mark.parametrize("rows,cols", [(256, 256), (300, 211), (211, 300), (2999, 1501), (7, 5)])
def test_image_lands_in_the_letterbox(rows: int, cols: int) -> None:
    # 1000 HU is white through the model's CT windows: the geometry is what is tested here
    x, t = preprocess(np.full((rows, cols), 1000.0, np.float32), 0.5, 1.0, modality="CT")
    assert x.shape == (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE)
    x1, y1, x2, y2 = t.content_box
    assert max(x2 - x1, y2 - y1) == pytest.approx(DEFAULT_INPUT_SIZE)  # long side fills it
    inside = x[int(y1) : int(y2), int(x1) : int(x2)]
    assert np.allclose(inside, 1.0)
    assert x.sum() == pytest.approx((x2 - x1) * (y2 - y1), rel=1e-5)  # padding is exactly 0
    # aspect ratio kept to within one model pixel
    assert (x2 - x1) / (y2 - y1) == pytest.approx(
        cols / rows, abs=1.0 / min(x2 - x1, y2 - y1) + 1e-9
    )


@pytest.mark.parametrize(
    "rows,cols,box",
    [
        (300, 211, (50, 100, 90, 150)),
        (1999, 2501, (700, 333, 1201, 900)),
        (513, 511, (10, 20, 77, 31)),
        (480, 640, (600, 400, 640, 480)),
    ],
)
def test_rectangle_centroid_and_area_follow_the_transform(
    rows: int, cols: int, box: tuple[int, int, int, int]
) -> None:
    img = np.full((rows, cols), -2000.0, np.float32)  # black through the model's CT windows
    img[box[1] : box[3], box[0] : box[2]] = 1000.0  # white
    x, t = preprocess(img, 0.5, 1.0, modality="CT")
    m = t.to_model(np.array(box, float))
    yy, xx = np.mgrid[0 : x.shape[0], 0 : x.shape[1]]
    mass = x.sum()
    # bilinear resampling conserves mass and centroid up to edge effects of a fraction of a pixel
    assert mass == pytest.approx((m[2] - m[0]) * (m[3] - m[1]), rel=0.02, abs=0.5)
    assert (x * (xx + 0.5)).sum() / mass == pytest.approx((m[0] + m[2]) / 2, abs=0.15)
    assert (x * (yy + 0.5)).sum() / mass == pytest.approx((m[1] + m[3]) / 2, abs=0.15)


def test_window_and_batch() -> None:
    w = apply_window(np.array([-1000.0, 40.0, 240.0, 3000.0]), 40, 400)
    np.testing.assert_allclose(w, [0.0, 0.5, 1.0, 1.0])
    with pytest.raises(ValueError):
        apply_window(np.zeros(3), 0, 0)
    batch, ts = preprocess_batch([(np.zeros((10, 20)), 0, 1), (np.ones((33, 7)), 0, 1)], size=64)
    assert batch.shape == (2, 1, 64, 64) and len(ts) == 2
    assert ts[1].src_rows == 33 and ts[1].src_cols == 7


def test_rejects_non_2d() -> None:
    with pytest.raises(ValueError):
        preprocess(np.zeros((3, 4, 4)), 0, 1)


# -- intensity: what the header says must not change what the model sees ----------------------


def _phantom_like(rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    yy, xx = np.mgrid[0:300, 0:240] / 300.0
    body = ((xx - 0.4) / 0.35) ** 2 + ((yy - 0.5) / 0.45) ** 2 < 1
    img = np.where(body, lo + (hi - lo) * (0.4 + 0.5 * yy), lo)
    return (img + rng.normal(0, (hi - lo) * 0.01, img.shape)).astype(np.float32)


def test_ct_ignores_the_header_window() -> None:
    hu = _phantom_like(np.random.default_rng(0), -1000.0, 300.0)
    a, _ = preprocess(hu, 40, 400, modality="CT")
    b, _ = preprocess(hu, -600, 1500, modality="CT")
    np.testing.assert_array_equal(a, b)
    # and it is the model's fixed curve: soft tissue and lung both keep contrast
    np.testing.assert_allclose(ct_curve(np.array([-1350.0, 240.0])), [0.0, 1.0], atol=1e-6)
    mid = ct_curve(np.array([-800.0, -700.0, 30.0, 60.0]))
    assert mid[1] - mid[0] > 0.02 and mid[3] - mid[2] > 0.04


def test_mr_is_normalised_from_the_image() -> None:
    mr = _phantom_like(np.random.default_rng(1), 0.0, 900.0)
    a, _ = preprocess(mr, 450, 900, modality="MR")
    b, _ = preprocess(mr * 3.0 + 50.0, 100, 50, modality="MR")  # another gain, another window
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert a.max() == pytest.approx(1.0) and a.min() == 0.0


def test_xray_applies_its_voi_window_then_its_own_range() -> None:
    xr = _phantom_like(np.random.default_rng(2), 100.0, 3500.0)
    a, _ = preprocess(xr, 1800, 3600, modality="DX")
    # the same picture at another exposure, windowed the same way by the modality: same input
    b, _ = preprocess(xr * 0.5 + 10, 1800 * 0.5 + 10, 3600 * 0.5, modality="DX")
    np.testing.assert_allclose(a, b, atol=1e-5)
    # a narrower window clips more (the VOI LUT is part of an X-ray), the range is re-stretched
    c, _ = preprocess(xr, 1800, 1800, modality="CR")
    assert c.max() == pytest.approx(1.0) and (c == 1.0).mean() > (a == 1.0).mean()


def test_a_rendered_png_reads_like_its_dicom() -> None:
    """The MedRegA-protocol server gets an 8-bit rendering (window applied) and no modality."""
    xr = _phantom_like(np.random.default_rng(3), 100.0, 3500.0)
    center, width = 1900.0, 3000.0
    png = np.rint(apply_window(xr, center, width) * 255).astype(np.float32)
    a, _ = preprocess(xr, center, width, modality="DX")
    b, _ = preprocess(png, 127.5, 255.0)
    assert np.abs(a - b).max() < 3 / 255


def test_batch_takes_a_modality() -> None:
    hu = _phantom_like(np.random.default_rng(4), -1000.0, 300.0)
    batch, _ = preprocess_batch([(hu, 40, 400, "CT"), (hu, -600, 1500, "CT")], size=64)
    np.testing.assert_array_equal(batch[0], batch[1])
    flat, _ = preprocess(np.full((80, 80), 7.0, np.float32), 7, 10, modality="MR")
    assert not flat.any()  # nothing to stretch: black, not noise blown up
