"""Training augmentations keep their labels true, and the evaluation's shifts are what they say:
boxes follow crops and rotations, the CT curve inverts, a MONOCHROME1 X-ray read back by the
worker's reader is the same picture, half resolution halves the boxes."""

from __future__ import annotations

import numpy as np
import pytest

from model import shifts
from model.augment import (
    Sample,
    _crop,
    _rotate,
    augment,
    hu_from_ct_input,
    stretch_content,
)
from model.evaluate import markdown_tables, shift_summary
from model.phantoms.generator import generate_image
from shared.inference.preprocess import ct_curve, preprocess


def _square_sample(lesion: bool) -> Sample:
    img = np.zeros((256, 256), np.float32)
    img[40:80, 150:200] = 1.0
    box = np.array([[150, 40, 200, 80]], np.float32) / 256
    if lesion:
        return Sample(
            img,
            np.zeros((1, 4), np.float32),
            np.array([False]),
            box,
            np.array([0]),
            (0, 16, 256, 240),
        )
    return Sample(
        img, box, np.array([True]), np.zeros((1, 4), np.float32), np.array([-1]), (0, 0, 256, 256)
    )


def _bright_box(x: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(x > 0.5)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)


@pytest.mark.parametrize("seed", range(6))
def test_rotation_moves_boxes_with_the_image(seed: int) -> None:
    s = _square_sample(lesion=False)
    _rotate(s, np.random.default_rng(seed))
    np.testing.assert_allclose(s.region_boxes[0] * 256, _bright_box(s.image), atol=1.5)


@pytest.mark.parametrize("seed", range(6))
def test_crop_keeps_the_lesion_and_its_box(seed: int) -> None:
    s = _square_sample(lesion=True)
    _crop(s, np.random.default_rng(seed))
    np.testing.assert_allclose(s.lesion_boxes[0] * 256, _bright_box(s.image), atol=1.5)
    x1, y1, x2, y2 = s.content
    assert max(x2 - x1, y2 - y1) == 256  # re-letterboxed: the long side fills the input
    assert not s.image[:y1].any() and not s.image[y2:].any()


def test_ct_curve_inverts() -> None:
    hu = np.linspace(-1300, 230, 200).astype(np.float32)
    np.testing.assert_allclose(hu_from_ct_input(ct_curve(hu)), hu, atol=0.5)


def test_augment_keeps_values_in_range_and_padding_black() -> None:
    rng = np.random.default_rng(0)
    for domain, modality in (("cxr", "DX"), ("abd_ct", "CT"), ("brain_mr", "MR")):
        img = generate_image(domain, 5, max_side=160)  # type: ignore[arg-type]
        x, t = preprocess(img.pixels, *img.window, 128, modality)
        c = tuple(int(round(v)) for v in t.content_box)
        for _ in range(20):
            s = Sample(
                x.copy(),
                np.zeros((27, 4), np.float32),
                np.zeros(27, bool),
                np.zeros((4, 4), np.float32),
                np.full(4, -1),
                c,
            )  # type: ignore[arg-type]
            out = augment(s, domain, rng, strength=1.5).image
            assert out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
            x1, y1, x2, y2 = s.content
            assert not out[:y1].any() and not out[y2:].any()
            assert not out[:, :x1].any() and not out[:, x2:].any()


def test_stretch_content_ignores_padding() -> None:
    x = np.zeros((64, 64), np.float32)
    x[:, 16:48] = np.linspace(0.2, 0.6, 64)[:, None]
    out = stretch_content(x, (16, 0, 48, 64))
    assert out[:, 16:48].max() == pytest.approx(1.0, abs=0.02)
    assert out[:, 16:48].min() == pytest.approx(0.0, abs=0.02)
    assert not out[:, :16].any()


def test_monochrome1_shift_reads_back_the_same_picture() -> None:
    img = generate_image("cxr", 7, max_side=256)
    (pixels, c, w, modality), scale = shifts.apply(
        "monochrome1", "cxr", img, np.random.default_rng(0)
    )
    assert modality == "DX" and scale == 1.0
    a, _ = preprocess(img.pixels, *img.window, 128, "DX")
    b, _ = preprocess(pixels, c, w, 128, "DX")
    assert np.abs(a - b).max() < 2e-3  # stored as integers: rounding only


def test_half_resolution_and_where_shifts_apply() -> None:
    img = generate_image("abd_ct", 3, max_side=200)
    (pixels, *_), scale = shifts.apply("resolution:half", "abd_ct", img, np.random.default_rng(0))
    assert scale == 0.5 and pixels.shape == (img.pixels.shape[0] // 2, img.pixels.shape[1] // 2)
    assert shifts.apply("contrast:gamma0.6", "abd_ct", img, np.random.default_rng(0)) is None
    assert shifts.apply("monochrome1", "abd_ct", img, np.random.default_rng(0)) is None
    (_, c, w, _), _ = shifts.apply("window:other", "abd_ct", img, np.random.default_rng(0))
    assert (c, w) != img.window
    # the header window is all that changed, and CT ignores it: the model input is identical
    (p2, c2, w2, m2), _ = shifts.apply("window:narrow", "abd_ct", img, np.random.default_rng(0))
    np.testing.assert_array_equal(
        preprocess(p2, c2, w2, 64, m2)[0], preprocess(img.pixels, *img.window, 64, "CT")[0]
    )


def test_shift_summary_takes_the_worst() -> None:
    def row(acc: float, f: float, rej: float) -> dict[str, float]:
        return {
            "t2r_acc50": acc, "t2r_miou": acc, "r2t_acc": acc, "lesion_f1": f, "finding_f1": f,
            "in_domain_false_reject": rej, "cxr_lesion_f1": f, "cxr_t2r_acc50": acc,
            "cxr_false_reject": rej,
        }  # fmt: skip

    clean = row(0.99, 0.9, 0.0)
    shifted = {"a": row(0.97, 0.85, 0.01), "b": row(0.95, 0.88, 0.03)}
    got = shift_summary(clean, shifted)
    assert got["shift_worst_t2r_acc50"] == 0.95
    assert got["shift_worst_lesion_f1"] == 0.85
    assert got["shift_worst_false_reject"] == 0.03
    assert got["shift_worst_cxr_lesion_f1"] == 0.85
    table = markdown_tables(clean, shifted)
    assert "| b | 0.950 |" in table and "| clean |" in table and "—" in table


def test_evaluation_keeps_only_what_the_grids_draw() -> None:
    """The shifted run keeps full-resolution pixels per kept image: only the grids' few."""
    from types import SimpleNamespace

    from model.evaluate import GRID_ABNORMAL, GRID_NORMAL, _wanted_for_grid

    kept: list = []
    for seed in range(20):
        study = SimpleNamespace(domain="cxr", images=[None])
        im = SimpleNamespace(findings=["x"] if seed % 2 else [], slice_index=0)
        if _wanted_for_grid(kept, study, im):  # type: ignore[arg-type]
            kept.append((study, im, None))
    assert sum(bool(e[1].findings) for e in kept) == GRID_ABNORMAL
    assert sum(not e[1].findings for e in kept) == GRID_NORMAL
    # a normal CT slice away from the sampled positions is not kept at all
    ct = SimpleNamespace(domain="abd_ct", images=[None] * 30)
    assert not _wanted_for_grid([], ct, SimpleNamespace(findings=[], slice_index=4))  # type: ignore[arg-type]
