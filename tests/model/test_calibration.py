"""Lesion-score calibration: Platt scaling fitted on the detections the model reports."""

from __future__ import annotations

import numpy as np
import torch

from model.calibration import fit_lesion
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
