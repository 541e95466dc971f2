"""The calibration against site variations: the OOD gate is held to a reject rate in every
domain × kind of variation (a rare kind cannot hide in the total), the lesion threshold is
chosen for the worst variation as well as the clean images, the source-space copies it uses,
and the noise rate that grows with a domain's augmentation strength."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model import augment, site_copies
from model.augment import Sample
from model.calibration import (
    choose_lesion_threshold,
    fit_unsupported_bias,
    fit_unsupported_bias_per_group,
    gate_threshold_per_group,
)
from model.phantoms.types import DOMAINS


def test_gate_threshold_keeps_a_small_group() -> None:
    """1,000 confident images and one small group (100) of which 5 score 0.5: over everything
    the 1 % quantile is 0.99, which would reject 5 % of the small group; per group it is not."""
    rng = np.random.default_rng(0)
    best = np.concatenate([rng.uniform(0.98, 1.0, 1000), rng.uniform(0.95, 1.0, 95), [0.5] * 5])
    groups = np.array([0] * 1000 + [1] * 100)
    accepted = np.ones(len(best), bool)
    assert float(np.quantile(best, 0.01)) > 0.9  # the pooled rule
    tau = gate_threshold_per_group(best, accepted, groups, 0.01)
    assert tau <= 0.5 + 1e-9
    small = groups == 1
    assert (best[small] < tau).mean() <= 0.01


def test_unsupported_offset_per_group_answers_the_small_group() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1, (1100, 5))
    z[:, 0] += 6
    z[1000:1004, 4] = z[1000:1004, 0] + 2.0  # 4 % of the small group: 'unsupported' on top
    groups = np.array([0] * 1000 + [1] * 100)
    pooled = fit_unsupported_bias(z, np.ones(1100, bool), 1.0, 0.01)
    per_group = fit_unsupported_bias_per_group(z, groups, 1.0, 0.01)
    assert per_group < pooled
    shifted = z.copy()
    shifted[:, 4] += per_group
    on_top = shifted.argmax(1) == 4
    assert on_top[groups == 1].mean() <= 0.01


def _detections(n_true: int, n_false: int, false_scores: tuple[float, float], seed: int):
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.uniform(0.75, 1.0, n_true), rng.uniform(*false_scores, n_false)])
    tp = np.concatenate([np.ones(n_true, bool), np.zeros(n_false, bool)])
    return scores, tp, n_true


def test_lesion_threshold_rises_for_a_noisy_variation_within_clean_tolerance() -> None:
    """Clean: false detections below 0.4, any threshold in 0.4-0.75 is best. Noisy: 60 false
    detections at 0.5-0.7. The clean-only choice is the lowest best threshold; with the noisy
    copies it moves to 0.7 or above at (almost) no clean cost."""
    clean = _detections(100, 20, (0.1, 0.4), 0)
    noisy = _detections(100, 60, (0.5, 0.7), 1)
    thr, clean_f1, worst = choose_lesion_threshold(clean, [noisy], tolerance=0.01)
    assert thr >= 0.7 - 1e-9
    assert clean_f1 >= 0.99
    assert worst > 0.95
    thr_clean_only, _, _ = choose_lesion_threshold(clean, [], tolerance=0.0)
    assert thr_clean_only < 0.5


def test_lesion_threshold_keeps_the_clean_f1() -> None:
    """A variation whose false detections score like the true ones cannot pull the threshold
    past the clean tolerance."""
    clean = _detections(100, 20, (0.1, 0.4), 0)
    hopeless = _detections(50, 200, (0.3, 1.0), 2)
    thr, clean_f1, _ = choose_lesion_threshold(clean, [hopeless], tolerance=0.01)
    assert clean_f1 >= 0.99 - 1e-9


def test_site_copies_cover_every_kind_that_applies() -> None:
    data = site_copies.build(1, 64, log=lambda s: None)
    kinds = {
        d: {site_copies.KINDS[k] for k in data["kind"][data["domain"] == i]}
        for i, d in enumerate(DOMAINS)
    }
    every = set(site_copies.KINDS)
    assert kinds["cxr"] == every and kinds["brain_mr"] == every
    assert kinds["chest_ct"] == kinds["abd_ct"] == every - {"contrast"}  # CT numbers: no curve
    assert data["image"].dtype == np.uint8 and data["image"].shape[1:] == (64, 64)
    assert data["image"].max() > 0
    # the copies of one phantom share its targets (no kind here moves the boxes)
    for i in range(len(DOMAINS)):
        boxes = data["region_boxes"][data["domain"] == i]
        assert np.array_equal(boxes, np.broadcast_to(boxes[0], boxes.shape))


def test_site_copies_are_validation_phantoms_after_the_cached_ones() -> None:
    from model.phantoms.splits import seeds, split_of
    from model.train import Recipe

    # The calibration's cached validation set takes the first val_per_domain seeds.
    assert site_copies.START >= Recipe().val_per_domain
    first = seeds("val", 1, start=site_copies.START)[0]
    assert split_of(first) == "val"


@pytest.mark.parametrize(("strength", "low", "high"), [(1.0, 0.38, 0.52), (1.6, 0.64, 0.80)])
def test_noise_rate_grows_with_strength(
    monkeypatch: pytest.MonkeyPatch, strength: float, low: float, high: float
) -> None:
    """Among the images `_quality` varies, the share given noise is NOISE_RATE × strength."""
    calls = {"quality": 0, "noise": 0}
    real_quality, real_noise = augment._quality, augment._add_noise

    def quality(*a, **k):
        calls["quality"] += 1
        return real_quality(*a, **k)

    def noise(*a, **k):
        calls["noise"] += 1
        return real_noise(*a, **k)

    monkeypatch.setattr(augment, "_quality", quality)
    monkeypatch.setattr(augment, "_add_noise", noise)
    rng = np.random.default_rng(3)
    for _ in range(600):
        x = np.zeros((48, 48), np.float32)
        x[8:40, 8:40] = 0.5
        s = Sample(
            x, np.zeros((1, 4)), np.zeros(1, bool), np.zeros((1, 4)), np.full(1, -1), (8, 8, 40, 40)
        )
        augment.augment(s, "abd_ct", rng, strength=strength)
    assert low < calls["noise"] / calls["quality"] < high


def test_export_can_replace_the_lesion_threshold() -> None:
    """A shipped operating point (1.4.0: 0.70), or one per domain, can be chosen on validation
    under site variations after training; the export writes it instead of the calibration's."""
    import pytest as _pytest

    from model.export import metadata, with_lesion_threshold
    from model.network import NetConfig, RegionNet
    from shared.inference.reference_onnx import ModelContractError

    meta = {
        "calibration": {"lesion_threshold": 0.41, "temperatures": {}},
        "domain_outputs": ["cxr", "unsupported"],
        "region_codes": [],
        "finding_codes": [],
        "vocab_version": "v",
        "git_commit": "c",
        "steps": 1,
    }
    model = RegionNet(NetConfig(input_size=64, n_regions=27, n_findings=11))
    assert metadata(model, meta)["lesion_threshold"] == "0.41"
    moved = with_lesion_threshold(meta, 0.6)
    assert metadata(model, moved)["lesion_threshold"] == "0.6"
    assert meta["calibration"]["lesion_threshold"] == 0.41  # the run's record is not changed
    with _pytest.raises(ModelContractError, match=r"lesion_threshold outside \(0, 1\)"):
        metadata(model, with_lesion_threshold(meta, 1.5))
    # a point per domain (none unless given), beside the common one
    assert json.loads(metadata(model, meta)["lesion_thresholds"]) == {}
    split = metadata(model, with_lesion_threshold(meta, 0.7, {"cxr": 0.45}))
    assert (split["lesion_threshold"], json.loads(split["lesion_thresholds"])) == (
        "0.7",
        {"cxr": 0.45},
    )
    assert "lesion_thresholds" not in meta["calibration"]
