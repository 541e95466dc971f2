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
