"""The fine-tuning recipe's knobs: domain weights change how often a domain is drawn, and the
noise augmentation keeps CT noise in Hounsfield units and the letterbox black."""

from __future__ import annotations

import numpy as np
import pytest

from model.augment import Sample, _add_noise, hu_from_ct_input
from model.phantoms.types import DOMAINS
from model.train import epoch_order, parse_domain_weights


def test_equal_weights_draw_every_image_once() -> None:
    domains = np.repeat(np.arange(4), 25)
    order = epoch_order(domains, (1.0, 1.0, 1.0, 1.0), np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(100))


def test_a_heavier_domain_is_drawn_more_often() -> None:
    domains = np.repeat(np.arange(4), 250)
    order = epoch_order(domains, (1.0, 1.0, 3.0, 1.0), np.random.default_rng(0))
    share = np.bincount(domains[order], minlength=4) / len(order)
    assert share[2] == pytest.approx(0.5, abs=0.05)
    assert share[0] == pytest.approx(1 / 6, abs=0.04)


def test_domain_weights_parse_by_name() -> None:
    got = parse_domain_weights("abd_ct=2.5, brain_mr=1.5")
    assert got == tuple({"abd_ct": 2.5, "brain_mr": 1.5}.get(d, 1.0) for d in DOMAINS)
    for bad in ("liver=2", "abd_ct", "abd_ct=0"):
        with pytest.raises(ValueError):
            parse_domain_weights(bad)


def test_ct_noise_is_in_hounsfield_units() -> None:
    """Soft tissue (40 HU) gets noise of the drawn HU size, not a fraction of the grey range."""
    from shared.inference.preprocess import ct_curve

    x = np.zeros((128, 128), np.float32)
    x[16:112, 16:112] = ct_curve(np.full((96, 96), 40.0, np.float32))
    s = Sample(
        x, np.zeros((1, 4)), np.zeros(1, bool), np.zeros((1, 4)), np.full(1, -1), (16, 16, 112, 112)
    )
    hu = hu_from_ct_input(_add_noise(x, "abd_ct", s, np.random.default_rng(1))[16:112, 16:112])
    assert 3 < float(hu.std()) < 80
    assert float(np.median(hu)) == pytest.approx(40, abs=8)


def test_ct_noise_stays_below_the_cap() -> None:
    """The strongest CT noise drawn is CT_NOISE_MAX_HU (1.3.0 drew up to 70 HU, above the
    abdominal lesions' contrast)."""
    from model.augment import CT_NOISE_MAX_HU
    from shared.inference.preprocess import ct_curve

    x = np.zeros((96, 96), np.float32)
    x[8:88, 8:88] = ct_curve(np.full((80, 80), 40.0, np.float32))
    s = Sample(
        x, np.zeros((1, 4)), np.zeros(1, bool), np.zeros((1, 4)), np.full(1, -1), (8, 8, 88, 88)
    )
    rng = np.random.default_rng(7)
    stds = [
        float(hu_from_ct_input(_add_noise(x, "abd_ct", s, rng)[8:88, 8:88]).std())
        for _ in range(60)
    ]
    assert max(stds) <= CT_NOISE_MAX_HU * 1.1
    assert max(stds) > 0.6 * CT_NOISE_MAX_HU  # the range is still used


def test_augment_strength_per_domain_in_batches() -> None:
    """Strength 0 leaves a domain's images as cached; the others are still varied."""
    from model.batches import make_batch

    n, size = 16, 64
    rng = np.random.default_rng(0)
    data = {
        "image": rng.integers(60, 200, (n, size, size)).astype(np.uint8),
        "domain": np.array([0, 2] * (n // 2)),
        "region_boxes": np.tile(np.array([0.2, 0.2, 0.8, 0.8], np.float32), (n, 2, 1)),
        "region_present": np.ones((n, 2), bool),
        "abnormal": np.zeros((n, 2), bool),
        "findings": np.zeros((n, 3), bool),
        "lesion_boxes": np.tile(np.array([0.4, 0.4, 0.5, 0.5], np.float32), (n, 1, 1)),
        "lesion_classes": np.full((n, 1), -1),
        "content": np.tile(np.array([0, 0, size, size]), (n, 1)),
    }
    batch = make_batch(data, np.arange(n), rng, 0.0, 2, 1.0, (1.5, 1.0, 0.0, 1.0))
    got = batch["image"][:, 0].numpy()
    cached = data["image"].astype(np.float32) / 255.0
    same = [bool(np.array_equal(got[i], cached[i])) for i in range(n)]
    assert all(same[1::2])  # domain 2 (strength 0): untouched
    assert not all(same[0::2])  # domain 0 (strength 1.5): varied
