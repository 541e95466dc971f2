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
    x, t = preprocess(np.ones((rows, cols), np.float32), 0.5, 1.0)
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
    img = np.zeros((rows, cols), np.float32)
    img[box[1] : box[3], box[0] : box[2]] = 1.0
    x, t = preprocess(img, 0.5, 1.0)
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
