"""Locate/Identify keep the last frames they were asked about as model inputs: the same answers
as the uncached model, bounded memory, no decoding or preprocessing for a repeated question, and
the cached input cannot be changed by a request."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.phantoms.__main__ import write_phantom_study
from model.phantoms.splits import seeds
from shared.config import get_settings
from shared.inference import onnx_backend
from shared.inference.onnx_backend import RECENT_FRAMES, OnnxBackend
from shared.inference.reference_onnx import ImagePrediction
from shared.inference.study_images import read_frame
from shared.reports.domain import PixelBox
from tests.support.study_rows import study_input


def test_repeated_questions_reuse_the_model_input_and_answer_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = OnnxBackend(get_settings().model_path)
    studies = [
        write_phantom_study("cxr", seed, tmp_path, max_side=256)
        for seed in seeds("test", RECENT_FRAMES + 1)
    ]
    first = study_input(studies[0].files).instances[0]
    located = backend.locate(first, 1, "right lung")
    cached = backend._recent_frames[(str(first.path), 1)]
    assert isinstance(cached, tuple)
    model_input, _ = cached
    assert model_input.shape == (backend.model.info.input_size,) * 2  # not the source pixels

    # The uncached model, from the decoded frame, answers the same.
    decoded = read_frame(first, 1).frame
    (direct,) = backend.model.predict([(decoded.pixels, *decoded.window, first.modality)])
    region = next(r for r in direct.all_regions if r.code == "right_lung")
    assert located.boxes == [PixelBox(*region.box)]
    assert located.probability == region.presence

    # A repeated question neither decodes nor preprocesses.
    def not_again(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded or preprocessed again")

    monkeypatch.setattr(onnx_backend, "read_frame", not_again)
    monkeypatch.setattr(backend.model, "preprocess", not_again)
    assert backend.locate(first, 1, "right lung") == located
    identified = backend.identify(first, 1, located.boxes[0])
    assert identified.region_code == "right_lung"
    box = located.boxes[0]
    (direct_query,) = backend.model.predict_preprocessed(
        model_input[None, None], [cached[1]], [[(box.x1, box.y1, box.x2, box.y2)]]
    )
    assert identified.probability == direct_query.queries[0].probability
    assert backend._recent_frames[(str(first.path), 1)] is cached
    with pytest.raises(ValueError):
        model_input[0, 0] = 0.0  # read-only: no request can alter what the next one sees
    monkeypatch.undo()

    for study in studies[1:]:
        backend.locate(study_input(study.files).instances[0], 1, "left lung")
    assert len(backend._recent_frames) == RECENT_FRAMES
    assert (str(first.path), 1) not in backend._recent_frames  # the oldest went first
    with pytest.raises(ValueError):
        backend.locate(first, 2, "right lung")  # out of range: still an error, never cached
    assert (str(first.path), 2) not in backend._recent_frames


def test_an_image_too_small_to_read_is_refused_as_before(tmp_path: Path) -> None:
    backend = OnnxBackend(get_settings().model_path)
    study = write_phantom_study("cxr", seeds("test", 1)[0], tmp_path, max_side=48)
    image = study_input(study.files).instances[0]
    located = backend.locate(image, 1, "right lung")
    assert located.region_code == "right_lung" and located.boxes == []
    identified = backend.identify(image, 1, PixelBox(1, 1, 20, 20))
    assert identified.region_code is None
    assert isinstance(backend._recent_frames[(str(image.path), 1)], ImagePrediction)
