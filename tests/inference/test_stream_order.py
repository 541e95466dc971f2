"""Images come out of the streamed read in the whole-study read's order, across chunks: multi-
frame instances whose positions tie, and X-rays of two series numbered alike (found by review:
the streamed read once sorted within each chunk only)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from shared.inference import onnx_backend
from shared.inference.backend import InstanceInput, StudyInput
from shared.inference.study_images import read_images, select_images
from tests.listener.ct_files import TEST_UID_ROOT

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def _write(
    path: Path, modality: str, series: str, number: int | None, frames: int, view: str | None
) -> InstanceInput:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop = generate_uid(prefix=TEST_UID_ROOT)
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE, sop
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = modality, series, TEST_UID_ROOT + "1"
    if number is not None:
        ds.InstanceNumber = number
    if view:
        ds.ViewPosition = view
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = (np.arange(64 * frames, dtype=np.uint16) % 4000).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return InstanceInput(path, sop, CT_IMAGE, series, modality, None, number, None, None)


class _ShapeOnlyModel:
    """The model's preprocessing stand-in: the order of images is what is compared."""

    session = SimpleNamespace(get_providers=lambda: ["CPUExecutionProvider"])

    def preprocess(self, pixels: Any, center: float, width: float, modality: str | None) -> Any:
        return np.zeros((4, 4), np.float32), None


def _orders(study: StudyInput) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    backend = onnx_backend.OnnxBackend.__new__(onnx_backend.OnnxBackend)
    backend._supported_modalities = {"CT", "DX", "MR"}
    with ThreadPoolExecutor(2) as pool:
        read = backend._read_streamed(_ShapeOnlyModel(), study, pool)  # type: ignore[arg-type]
        assert not isinstance(read, Exception)
        list(read.chunks)
    streamed = [(i.instance.sop_instance_uid, i.frame.frame) for i in read.images]
    selected = select_images(study, {"CT", "DX", "MR"}, "medrega-ref")
    whole = [(i.instance.sop_instance_uid, i.frame.frame) for i in read_images(selected)]
    return streamed, whole


@pytest.mark.parametrize("kind", ["multi-frame CT, positions tie", "X-rays of two series"])
def test_the_streamed_order_is_the_whole_reads(kind: str, tmp_path: Path) -> None:
    if kind.startswith("multi-frame"):
        series = generate_uid(prefix=TEST_UID_ROOT)
        instances = [
            _write(tmp_path / f"ct{k}.dcm", "CT", series, None, 2, None) for k in range(18)
        ]
    else:
        first, second = generate_uid(prefix=TEST_UID_ROOT), generate_uid(prefix=TEST_UID_ROOT)
        instances = [
            _write(tmp_path / f"{s[-4:]}-{k}.dcm", "DX", s, k + 1, 1, "PA")
            for s in (first, second)
            for k in range(10)
        ]
    streamed, whole = _orders(StudyInput(TEST_UID_ROOT + "1", instances))
    assert len(streamed) > onnx_backend.STREAM_CHUNK  # more than one chunk
    assert streamed == whole
