"""Phantom generator: deterministic from the seed, exact and sane ground truth, splits."""

from __future__ import annotations

import numpy as np
import pytest

from model.phantoms.generator import generate_image, generate_study
from model.phantoms.splits import SPLITS, seeds, split_of
from model.phantoms.types import DOMAINS
from shared.vocab import load_vocab

VOCAB = load_vocab()


@pytest.mark.parametrize("domain", DOMAINS)
def test_same_seed_same_study(domain: str) -> None:
    a = generate_study(domain, 2_000_011, max_side=200)  # type: ignore[arg-type]
    b = generate_study(domain, 2_000_011, max_side=200)  # type: ignore[arg-type]
    assert len(a.images) == len(b.images)
    for x, y in zip(a.images, b.images, strict=True):
        assert np.array_equal(x.pixels, y.pixels)
        assert x.regions == y.regions and x.findings == y.findings and x.window == y.window
    assert a.findings == b.findings
    c = generate_study(domain, 2_000_012, max_side=200)  # type: ignore[arg-type]
    assert not np.array_equal(a.images[0].pixels, c.images[0].pixels)


@pytest.mark.parametrize("domain", DOMAINS)
def test_ground_truth_is_inside_the_image_and_in_the_vocabulary(domain: str) -> None:
    allowed_regions = {r.code for r in VOCAB.regions_for(domain)}
    allowed_findings = {f.code for f in VOCAB.findings_for(domain)}
    n_regions = 0
    for seed in range(2_000_000, 2_000_006):
        study = generate_study(domain, seed, max_side=256)  # type: ignore[arg-type]
        for f in study.findings:
            assert f.code in allowed_findings
            assert f.region_code in VOCAB.finding(f.code).regions
            assert f.size_mm > 0
        for img in study.images:
            rows, cols = img.pixels.shape
            assert img.pixels.dtype == np.float32 and np.isfinite(img.pixels).all()
            assert img.window[1] > 0
            for box in [r.box for r in img.regions] + [f.box for f in img.findings]:
                x1, y1, x2, y2 = box
                assert 0 <= x1 < x2 <= cols and 0 <= y1 < y2 <= rows
            assert {r.code for r in img.regions} <= allowed_regions
            n_regions += len(img.regions)
    assert n_regions > 0


def test_full_resolution_matrices() -> None:
    cxr = generate_study("cxr", 2_000_003).images[0]
    rows, cols = cxr.pixels.shape
    assert 1500 <= rows <= 3000 and 1500 <= cols <= 3000
    assert len({r.code for r in cxr.regions}) == 14  # MedRegA's 12 + trachea + spine
    assert 0 <= cxr.pixels.min() and cxr.pixels.max() <= 4095
    for domain in ("chest_ct", "abd_ct", "brain_mr"):
        study = generate_study(domain, 2_000_003)  # type: ignore[arg-type]
        assert 16 <= len(study.images) <= 40
        r, c = study.images[0].pixels.shape
        assert 256 <= r <= 512 and 256 <= c <= 512
        z = [im.slice_position_mm for im in study.images]
        assert all(a > b for a, b in zip(z, z[1:], strict=False))  # cranial first
    ct = generate_study("abd_ct", 2_000_004).images
    mid = ct[len(ct) // 2].pixels
    assert mid.min() < -900 and mid.max() > 300  # air and bone in Hounsfield units


def test_many_slices_on_request() -> None:
    study = generate_study("chest_ct", 2_000_005, n_slices=120, max_side=64)
    assert len(study.images) == 120
    assert [im.slice_index for im in study.images] == list(range(120))
    thickness = study.images[0].slice_thickness_mm
    gaps = np.diff([im.slice_position_mm for im in study.images])
    np.testing.assert_allclose(-gaps, thickness, atol=1e-2)


def test_normal_fraction_and_training_path() -> None:
    normal = [
        generate_study("brain_mr", s, n_slices=1, max_side=32).is_normal
        for s in range(2_000_000, 2_000_200)
    ]
    assert 0.3 < np.mean(normal) < 0.5
    img = generate_image("cxr", 17, max_side=384)
    assert max(img.pixels.shape) == 384 and img.regions


def test_splits_are_disjoint() -> None:
    ranges = sorted(SPLITS.values())
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert split_of(seeds("test", 5)[0]) == "test"
    assert split_of(seeds("val", 5, start=3)[-1]) == "val"
    with pytest.raises(ValueError):
        seeds("val", 10**9)
