"""The grayscale pipeline the standard's way (issue 13 §4): a SIGMOID VOI LUT Function renders
as a sigmoid, a Presentation LUT Shape INVERSE shows inverted, a DX with only a VOI LUT Sequence
renders with the LUT's greys, and one frame of a multi-frame image is decoded on its own."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from shared.dicom.pixels import (
    FrameOutOfRange,
    PixelDataUnsupported,
    frames_from_dataset,
    read_frame,
)
from shared.dicom.render import RenderError, render_decoded, render_frame


def _dx(stored: np.ndarray, photometric: str = "MONOCHROME2") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    frames = stored.shape[0] if stored.ndim == 3 else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = stored.astype("<u2").tobytes()
    return ds


def _greys(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)), dtype=np.float64)


STORED = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)


def test_a_sigmoid_voi_lut_function_renders_as_a_sigmoid() -> None:
    ds = _dx(STORED)
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = "2048", "1024", "SIGMOID"
    (frame,) = frames_from_dataset(ds)
    assert frame.voi_function == "SIGMOID"
    shown = _greys(render_decoded(frame, max_side=None).png)
    want = 255.0 / (1.0 + np.exp(-4.0 * (STORED - 2048.0) / 1024.0))  # PS3.3 C.11.2.1.3.1
    np.testing.assert_allclose(shown, want, atol=1.0)
    linear = np.clip((STORED - (2048.0 - 512.0)) / 1024.0, 0, 1) * 255.0
    assert np.abs(shown - linear).max() > 20  # a linear window would look clearly different
    # A preset or a window the radiologist sets is linear, whatever the header's function.
    custom = _greys(render_decoded(frame, max_side=None, center=2048, width=1024).png)
    np.testing.assert_allclose(custom, linear, atol=1.5)


def test_presentation_lut_shape_inverse_shows_a_monochrome2_image_inverted() -> None:
    ds = _dx(STORED)
    ds.WindowCenter, ds.WindowWidth = "1000", "2000"
    ds.PresentationLUTShape = "INVERSE"
    (inverse,) = frames_from_dataset(ds)
    np.testing.assert_allclose(inverse.pixels, 4095.0 - STORED)
    assert inverse.window == pytest.approx((4096.0 - 1000.0, 2000.0))
    # The same picture as MONOCHROME1 (which a DX declares with INVERSE: one inversion, not two).
    mono1 = _dx(STORED, "MONOCHROME1")
    mono1.WindowCenter, mono1.WindowWidth, mono1.PresentationLUTShape = "1000", "2000", "INVERSE"
    (as_mono1,) = frames_from_dataset(mono1)
    np.testing.assert_allclose(as_mono1.pixels, inverse.pixels)
    identity = _dx(STORED)
    identity.WindowCenter, identity.WindowWidth, identity.PresentationLUTShape = (
        "1",
        "2",
        "IDENTITY",
    )
    (plain,) = frames_from_dataset(identity)
    np.testing.assert_allclose(plain.pixels, STORED)


def test_a_dx_with_only_a_voi_lut_sequence_renders_with_the_luts_greys() -> None:
    lut = np.rint(4095 * (np.arange(4096) / 4095) ** 0.5).astype(np.uint16)
    ds = _dx(STORED)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.LUTData = [int(v) for v in lut]
    ds.VOILUTSequence = [item]
    (frame,) = frames_from_dataset(ds)
    shown = _greys(render_decoded(frame, max_side=None).png)
    np.testing.assert_allclose(shown, lut[STORED] / 4095.0 * 255.0, atol=1.0)


def _multi_frame_rle(tmp_path: Path, broken_first: bool) -> tuple[Path, np.ndarray]:
    stack = np.stack([STORED, 4095 - STORED, STORED // 2]).astype(np.uint16)
    ds = _dx(stack)
    ds.compress(RLELossless, stack)
    frames = list(generate_frames(ds.PixelData, number_of_frames=3))
    if broken_first:  # an RLE header promising a segment that is not there
        frames[0] = (1).to_bytes(4, "little") + (9999).to_bytes(4, "little") + bytes(56)
    ds.PixelData = encapsulate(frames)
    path = tmp_path / ("broken.dcm" if broken_first else "rle.dcm")
    ds.save_as(path, enforce_file_format=True)
    return path, stack


def test_one_frame_of_a_multi_frame_image_is_decoded_on_its_own(tmp_path: Path) -> None:
    path, stack = _multi_frame_rle(tmp_path, broken_first=False)
    every = frames_from_dataset(dcmread(path))
    for number in (1, 2, 3):
        one = read_frame(path, number)
        assert one.frame == number
        np.testing.assert_array_equal(one.pixels, every[number - 1].pixels)
        np.testing.assert_array_equal(one.pixels, stack[number - 1])
    # Frame 1 is undecodable: decoding everything fails, frame 2 alone still renders.
    broken, _ = _multi_frame_rle(tmp_path, broken_first=True)
    with pytest.raises(PixelDataUnsupported):
        frames_from_dataset(dcmread(broken))
    np.testing.assert_array_equal(read_frame(broken, 2).pixels, stack[1])
    assert render_frame(broken, 3, max_side=None).rows == 16
    with pytest.raises(FrameOutOfRange):
        read_frame(path, 4)
    with pytest.raises(RenderError, match="out of range 1..3"):
        render_frame(path, 0)
