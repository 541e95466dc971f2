"""Small CT-like DICOM files for listener tests and the ingest benchmark (written with pydicom).

Deliberately independent of model/phantoms: the listener only needs valid, realistic headers and
a pixel payload of realistic size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

# Test data gets its own root so it is never mistaken for ours (shared.dicom.uids).
TEST_UID_ROOT = "1.2.826.0.1.3680043.8.498.99."


@dataclass(frozen=True)
class WrittenStudy:
    study_uid: str
    series_uid: str
    files: list[Path]
    sop_instance_uids: list[str]


def ct_dataset(
    study_uid: str,
    series_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    size: int = 128,
    patient_name: str = "Phantom^Listener",
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid(prefix=TEST_UID_ROOT, entropy_srcs=[study_uid])
    ds.PatientName = patient_name
    ds.PatientID = "LST-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.AccessionNumber = "ACC0001"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyDescription = "CT CHEST"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.Modality = "CT"
    ds.Manufacturer = "Phantom Industries"
    ds.SeriesNumber = 1
    ds.SeriesDescription = "AXIAL"
    ds.BodyPartExamined = "CHEST"
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [0.0, 0.0, float(instance_number)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    y, x = np.mgrid[0:size, 0:size]
    disc = ((x - size / 2) ** 2 + (y - size / 2) ** 2) < (size * 0.4) ** 2
    pixels = np.where(disc, 1024 + 40 + (instance_number % 50), 24).astype(np.uint16)
    ds.PixelData = pixels.tobytes()
    return ds


def write_ct_study(
    directory: Path,
    count: int,
    size: int = 128,
    study_uid: str | None = None,
    series_uid: str | None = None,
    first_number: int = 1,
    rle: bool = False,
) -> WrittenStudy:
    """`count` CT slices of one series as Part 10 files (size 128 → ~33 KB, 140 → ~40 KB)."""
    directory.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid(prefix=TEST_UID_ROOT)
    series_uid = series_uid or generate_uid(prefix=TEST_UID_ROOT)
    files: list[Path] = []
    uids: list[str] = []
    for number in range(first_number, first_number + count):
        sop_uid = generate_uid(prefix=TEST_UID_ROOT)
        ds = ct_dataset(study_uid, series_uid, sop_uid, number, size=size)
        if rle:
            ds.compress(RLELossless, encoding_plugin="pydicom")
        path = directory / f"ct_{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        uids.append(sop_uid)
    return WrittenStudy(study_uid, series_uid, files, uids)
