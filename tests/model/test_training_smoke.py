"""`python -m model.train --smoke`: the training loop runs end to end and the loss falls."""

from __future__ import annotations

from dataclasses import replace

from model.train import SMOKE, train


def test_smoke_training_loss_falls() -> None:
    result = train(replace(SMOKE, name="smoke-test"), log=lambda _: None)
    assert result["steps"] >= 20
    assert result["loss_last"] < 0.8 * result["loss_first"], result
