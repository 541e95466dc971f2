"""DICOM → physical pixels: modality LUT, MONOCHROME1, windows, frames, compression, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from model.phantoms.dicom_writer import acquisition_profile, write_study
from model.phantoms.types import Domain, PhantomImage, PhantomStudy
from shared.dicom.pixels import PixelDataUnsupported, frames_from_dataset, read_frames

PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _study(
    domain: Domain, seed: int, physical: np.ndarray, window: tuple[float, float]
) -> PhantomStudy:
    image = PhantomImage(
        pixels=physical.astype(np.float32),
        pixel_spacing_mm=(0.7, 0.7),
        window=window,
        slice_thickness_mm=0.0 if domain == "cxr" else 2.5,
    )
    return PhantomStudy(domain=domain, seed=seed, images=[image], findings=[])


def _seed(domain: Domain, monochrome1: bool) -> int:
    for seed in range(500):
        if acquisition_profile(domain, seed).storage.monochrome1 == monochrome1:
            return seed
    raise AssertionError("no such seed")


@pytest.mark.parametrize(
    ("domain", "low", "high", "window", "monochrome1"),
    [
        ("chest_ct", -1000.0, 1500.0, (40.0, 400.0), False),
        ("brain_mr", 0.0, 900.0, (450.0, 900.0), False),
        ("cxr", 0.0, 4095.0, (2000.0, 3000.0), False),
        ("cxr", 0.0, 4095.0, (2000.0, 3000.0), True),
    ],
)
def test_physical_values_and_window_round_trip(
    tmp_path: Path,
    domain: Domain,
    low: float,
    high: float,
    window: tuple[float, float],
    monochrome1: bool,
) -> None:
    rng = np.random.default_rng(7)
    physical = np.rint(rng.uniform(low, high, (40, 52)))
    seed = _seed(domain, monochrome1) if domain == "cxr" else 3
    written = write_study(_study(domain, seed, physical, window), tmp_path / "s")
    path = sorted((tmp_path / "s").glob("*.dcm"))[0]
    assert (pydicom.dcmread(path).PhotometricInterpretation == "MONOCHROME1") == monochrome1
    (frame,) = read_frames(path)
    assert written is not None
    np.testing.assert_allclose(frame.pixels, physical, atol=0.5)
    assert frame.window == pytest.approx(window, abs=0.01)
    assert frame.frame == 1
    assert frame.pixel_spacing_mm == pytest.approx((0.7, 0.7))


def test_compressed_instance_decodes_to_the_same_pixels(tmp_path: Path) -> None:
    physical = np.rint(np.random.default_rng(1).uniform(-1000, 1000, (40, 52)))
    study = _study("chest_ct", 5, physical, (40.0, 400.0))
    write_study(study, tmp_path / "plain")
    write_study(study, tmp_path / "rle", transfer_syntax="rle")
    (plain,) = read_frames(next((tmp_path / "plain").glob("*.dcm")))
    (rle,) = read_frames(next((tmp_path / "rle").glob("*.dcm")))
    np.testing.assert_array_equal(plain.pixels, rle.pixels)


def test_multi_frame_instance_splits_into_frames() -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 16, 20, 3
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    cube = np.stack([np.full((16, 20), value, np.int16) for value in (-5, 0, 300)])
    ds.PixelData = cube.tobytes()
    frames = frames_from_dataset(ds)
    assert [f.frame for f in frames] == [1, 2, 3]
    assert [float(f.pixels[0, 0]) for f in frames] == [-5.0, 0.0, 300.0]
    assert all(f.pixels.dtype == np.float32 for f in frames)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("rtplan.dcm", "no pixel data"),
        ("examples_palette.dcm", "palette"),
        ("MR_truncated.dcm", "malformed pixel data"),
        ("no_meta.dcm", "unreadable"),
    ],
)
def test_unsupported_input_gets_a_reason_not_a_crash(name: str, reason: str) -> None:
    with pytest.raises(PixelDataUnsupported, match=reason):
        read_frames(PYDICOM_TEST_FILES / name)


def test_every_bundled_pydicom_file_decodes_or_says_why() -> None:
    decoded = 0
    for path in sorted(PYDICOM_TEST_FILES.glob("*.dcm")):
        try:
            frames = read_frames(path)
        except PixelDataUnsupported as exc:
            assert str(exc)
            continue
        decoded += 1
        assert all(np.isfinite(f.pixels).all() and f.window[1] > 0 for f in frames)
    assert decoded >= 40
