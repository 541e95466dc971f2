"""An X-ray whose VOI is a LUT (VOI LUT Sequence) and no window: the reader applies that LUT
with pydicom's function, in MONOCHROME2 and MONOCHROME1 alike."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from shared.dicom.pixels import frames_from_dataset


def _xray_with_voi_lut(stored: np.ndarray, lut: np.ndarray, photometric: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - Presentation
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = stored.astype("<u2").tobytes()
    item = Dataset()
    item.LUTDescriptor = [len(lut), 0, 12]
    item.LUTData = [int(v) for v in lut]
    ds.VOILUTSequence = [item]
    return ds


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_voi_lut_sequence_is_applied(photometric: str) -> None:
    stored = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    lut = np.rint(4095 * (np.arange(4096) / 4095) ** 0.5).astype(np.uint16)  # a tone curve
    (frame,) = frames_from_dataset(_xray_with_voi_lut(stored, lut, photometric))
    want = lut[stored].astype(np.float32)
    if photometric == "MONOCHROME1":
        want = 4095 - want  # shown inverted: brighter = higher after the reader
    np.testing.assert_allclose(frame.pixels, want)
    assert frame.window == pytest.approx((2048.0, 4096.0))


def test_a_window_is_used_instead_of_the_lut() -> None:
    stored = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    lut = np.arange(4096, dtype=np.uint16)[::-1].copy()
    ds = _xray_with_voi_lut(stored, lut, "MONOCHROME2")
    ds.WindowCenter, ds.WindowWidth = "2000", "3000"
    (frame,) = frames_from_dataset(ds)
    np.testing.assert_allclose(frame.pixels, stored.astype(np.float32))
    assert frame.window == pytest.approx((2000.0, 3000.0))
