"""Locate/Identify keep the last few decoded frames: the same answers, bounded memory, and the
cached pixels cannot be changed by a request."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.phantoms.__main__ import write_phantom_study
from model.phantoms.splits import seeds
from shared.config import get_settings
from shared.inference.onnx_backend import RECENT_FRAMES, OnnxBackend
from tests.support.study_rows import study_input


def test_repeated_questions_reuse_the_decoded_frame_and_answer_the_same(tmp_path: Path) -> None:
    backend = OnnxBackend(get_settings().model_path)
    studies = [
        write_phantom_study("cxr", seed, tmp_path, max_side=256)
        for seed in seeds("test", RECENT_FRAMES + 1)
    ]
    first = study_input(studies[0].files).instances[0]
    located = backend.locate(first, 1, "right lung")
    cached = backend._recent_frames[(str(first.path), 1)]
    assert backend.locate(first, 1, "right lung") == located
    identified = backend.identify(first, 1, located.boxes[0])
    assert identified.region_code == "right_lung"
    assert backend._recent_frames[(str(first.path), 1)] is cached  # decoded once
    with pytest.raises(ValueError):
        cached.pixels[0, 0] = 0.0  # read-only: no request can alter what the next one sees
    for study in studies[1:]:
        backend.locate(study_input(study.files).instances[0], 1, "left lung")
    assert len(backend._recent_frames) == RECENT_FRAMES
    assert (str(first.path), 1) not in backend._recent_frames  # the oldest went first
    with pytest.raises(ValueError):
        backend.locate(first, 2, "right lung")  # out of range: still an error, never cached
    assert (str(first.path), 2) not in backend._recent_frames
