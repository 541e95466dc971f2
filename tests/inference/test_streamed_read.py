"""A study drafted alone is read in chunks (decoded and preprocessed while the model reads the
previous chunk, keeping model inputs only): it gets exactly the draft the whole-study read gives,
and holds neither the decoded pixels nor the files' pixel bytes once read."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import Dataset

from model.phantoms.__main__ import write_phantom_study
from model.phantoms.splits import seeds
from shared.config import get_settings
from shared.inference import onnx_backend
from shared.inference.onnx_backend import OnnxBackend
from shared.inference.study_images import select_images
from shared.reports.domain import DraftResult
from tests.support.study_rows import study_input


def _comparable(result: DraftResult | Exception) -> object:
    assert isinstance(result, DraftResult), result
    return (result.domain, result.applicable, result.findings, result.sentences)


@pytest.mark.parametrize("read_ahead", [False, True])
@pytest.mark.parametrize("domain", ["abd_ct", "brain_mr", "cxr"])
def test_the_streamed_read_drafts_what_the_whole_read_drafts(
    domain: str, read_ahead: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if read_ahead:  # as with a GPU model: the next chunk is decoded while the model runs
        monkeypatch.setattr(onnx_backend, "GPU_PROVIDERS", frozenset({"CPUExecutionProvider"}))
    monkeypatch.setattr(onnx_backend, "STREAM_CHUNK", 2)  # several chunks even for a phantom
    monkeypatch.setattr(onnx_backend, "BATCH_SIZE", 3)  # batches that straddle the chunks
    (seed,) = seeds("test", 1)
    study = study_input(write_phantom_study(domain, seed, tmp_path, max_side=256).files)
    backend = OnnxBackend(get_settings().model_path)
    (streamed,) = backend.draft_iter([study])  # alone: streamed
    whole, again = backend.draft_iter([study, study])  # several studies: each read whole
    assert _comparable(streamed) == _comparable(whole) == _comparable(again)
    assert isinstance(streamed, DraftResult)
    assert streamed.timings_ms["images"] == whole.timings_ms["images"]  # type: ignore[union-attr]


def test_the_stream_keeps_model_inputs_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_backend, "STREAM_CHUNK", 2)
    (seed,) = seeds("test", 1)
    study = study_input(write_phantom_study("abd_ct", seed, tmp_path, max_side=256).files)
    backend = OnnxBackend(get_settings().model_path)
    selections: list[list[tuple[object, Dataset]]] = []

    def recording(*args: object, **kwargs: object) -> list[tuple[object, Dataset]]:
        selections.append(select_images(*args, **kwargs))  # type: ignore[arg-type]
        return selections[-1]

    monkeypatch.setattr(onnx_backend, "select_images", recording)
    read = backend._read_streamed(backend.model, study, backend._pool())
    assert not isinstance(read, Exception)
    chunks = list(read.chunks)
    # Every file's pixel bytes were read on demand and let go once decoded.
    (((_, first_ds), *_),) = selections
    assert all("PixelData" not in ds for _, ds in selections[0])
    assert first_ds.filename  # read from its file, not held
    assert len(chunks) >= 2 and sum(len(c) for c in chunks) == len(read.images)
    assert all(image.frame.pixels.size == 0 for image in read.images)
    positions = [image.position for image in read.images]
    assert positions == sorted(positions)


@pytest.mark.parametrize("every", [1, 3])
def test_undecodable_slices_are_answered_alike(
    every: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every slice (or every third) with its pixel data cut short: the same answer both ways
    (not applicable with the decoder's reason, or a draft from the slices that remain)."""
    monkeypatch.setattr(onnx_backend, "STREAM_CHUNK", 4)
    (seed,) = seeds("test", 1)
    study = study_input(write_phantom_study("abd_ct", seed, tmp_path, max_side=256).files)
    for instance in study.instances[::every]:
        data = instance.path.read_bytes()
        instance.path.write_bytes(data[: len(data) - 2000])
    backend = OnnxBackend(get_settings().model_path)
    (streamed,) = backend.draft_iter([study])
    whole, _ = backend.draft_iter([study, study])
    assert _comparable(streamed) == _comparable(whole)
    assert isinstance(streamed, DraftResult)
    if every == 1:
        assert not streamed.applicable and "malformed pixel data" in (streamed.reason or "")
