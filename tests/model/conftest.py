"""Fixtures for the reference model tests: the committed artifact and a few test phantoms."""

from __future__ import annotations

from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "model" / "artifacts"
ONNX_PATH = ARTIFACTS / "medrega-ref.onnx"
WEIGHTS_PATH = ARTIFACTS / "medrega-ref.pt"


@pytest.fixture(scope="session")
def reference_model():
    from shared.inference.reference_onnx import ReferenceModel

    return ReferenceModel.load(ONNX_PATH, threads=2)
