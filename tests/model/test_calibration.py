"""Lesion-score calibration: Platt scaling fitted on the detections the model reports; the OOD
gate's offset for 'unsupported', fitted on in-domain images (clean and shifted)."""

from __future__ import annotations

import numpy as np
import torch

from model.calibration import fit_lesion, fit_unsupported_bias
from model.export import _with_defaults
from model.metrics import ece_binary


def _underconfident(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose sigmoid is systematically below the true hit rate, plus easy negatives."""
    rng = np.random.default_rng(seed)
    true_p = rng.uniform(0.6, 0.999, 600)
    hits = rng.random(600) < true_p
    logits = np.log(true_p / (1 - true_p)) * 0.5 - 0.8  # squashed and shifted down
    negatives = rng.normal(-6, 1, 2000)
    return np.concatenate([logits, negatives]), np.concatenate([hits, np.zeros(2000, bool)])


def test_platt_scaling_calibrates_the_reported_detections() -> None:
    logits, tp = _underconfident()
    n_gt = int(tp.sum()) + 20
    temperature, bias, threshold, f1 = fit_lesion(logits, tp, n_gt)
    before = 1 / (1 + np.exp(-logits))
    after = 1 / (1 + np.exp(-(logits / temperature + bias)))
    kept_before = before >= 0.5
    kept = after >= threshold
    assert ece_binary(after[kept], tp[kept]) < 0.5 * ece_binary(
        before[kept_before], tp[kept_before]
    )
    assert temperature > 0 and 0 < threshold < 1 and f1 > 0.8
    # Monotonic: the ranking (and so every detection's rank) is unchanged.
    assert (np.argsort(after, kind="stable") == np.argsort(before, kind="stable")).all()


def test_degenerate_inputs_keep_the_identity() -> None:
    logits = np.array([2.0, 1.0, -1.0])
    assert fit_lesion(logits, np.array([True, True, False]), 2)[:2] == (1.0, 0.0)


def test_weights_from_before_the_lesion_bias_load_with_bias_zero() -> None:
    state = {"t_lesion": torch.ones(())}
    assert float(_with_defaults(state)["b_lesion"]) == 0.0
    assert _with_defaults({"b_lesion": torch.ones(())})["b_lesion"] == 1.0


def _domain_logits(n: int, unsupported_on_top: float, seed: int = 0) -> np.ndarray:
    """In-domain logits: domain 0 wins, except for a share whose 'unsupported' logit is higher."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1, (n, 5))
    z[:, 0] += 6
    flip = rng.random(n) < unsupported_on_top
    z[flip, 4] = z[flip, 0] + rng.uniform(0.1, 3, flip.sum())
    return z


def test_unsupported_bias_answers_shifted_in_domain_images() -> None:
    z = _domain_logits(4000, 0.05)
    in_domain = np.ones(len(z), bool)
    bias = fit_unsupported_bias(z, in_domain, 1.0, 0.005)
    assert bias < 0
    on_top = (z[:, 4] + bias > z[:, :4].max(1)).mean()
    assert 0.003 <= on_top <= 0.005


def test_unsupported_bias_is_never_raised() -> None:
    z = _domain_logits(1000, 0.0)
    assert fit_unsupported_bias(z, np.ones(len(z), bool), 1.0, 0.005) == 0.0


def test_weights_from_before_the_domain_offsets_load_with_zeros() -> None:
    got = _with_defaults({"t_domain": torch.ones(())})["b_domain"]
    assert got.shape == (5,) and not got.any()
