"""Small, valid CT and DX images written with pydicom, as source images for SR tests.

Hand-built (not the phantom writer) so SR tests depend on nothing but pydicom.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

TEST_ROOT = "1.2.826.0.1.3680043.8.498.7781.999."  # our root, a branch only tests use


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _base(
    sop_class_uid: str,
    modality: str,
    study_uid: str,
    series_uid: str,
    patient_name: str,
    charset: str | None,
    rows: int,
    columns: int,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    sop_uid = generate_uid(prefix=TEST_ROOT)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = "20261127"
    ds.StudyTime = "101500"
    ds.ContentDate = "20261127"
    ds.ContentTime = "101500"
    ds.AccessionNumber = "ACC0001"
    ds.Modality = modality
    ds.Manufacturer = "ACME"
    ds.ReferringPhysicianName = "Ref^Doc"
    ds.PatientName = patient_name
    ds.PatientID = "PID0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = np.zeros((rows, columns), dtype=np.uint16).tobytes()
    return ds


def write_ct_series(
    directory: Path,
    *,
    slices: int = 3,
    patient_name: str = "Doe^Jane",
    charset: str | None = None,
    rows: int = 64,
    columns: int = 64,
) -> list[Path]:
    study_uid = generate_uid(prefix=TEST_ROOT)
    series_uid = generate_uid(prefix=TEST_ROOT)
    frame_of_reference = generate_uid(prefix=TEST_ROOT)
    paths = []
    for index in range(slices):
        ds = _base(
            CTImageStorage, "CT", study_uid, series_uid, patient_name, charset, rows, columns
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = index + 1
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.BodyPartExamined = "CHEST"
        ds.PatientPosition = "HFS"
        ds.KVP = 120
        ds.AcquisitionNumber = 1
        ds.SliceThickness = 2.5
        ds.PixelSpacing = [0.7, 0.7]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-22.4, -22.4, -2.5 * index]
        ds.SliceLocation = -2.5 * index
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        path = directory / f"ct_{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_dx(
    directory: Path,
    *,
    patient_name: str = "Doe^Jane",
    charset: str | None = None,
    rows: int = 96,
    columns: int = 80,
) -> Path:
    study_uid = generate_uid(prefix=TEST_ROOT)
    series_uid = generate_uid(prefix=TEST_ROOT)
    ds = _base(
        DigitalXRayImageStorageForPresentation,
        "DX",
        study_uid,
        series_uid,
        patient_name,
        charset,
        rows,
        columns,
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["R", "F"]
    ds.ImagerPixelSpacing = [0.5, 0.5]
    ds.PixelSpacing = [0.5, 0.5]
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.BurnedInAnnotation = "NO"
    ds.ImageLaterality = "U"
    ds.DetectorType = "DIRECT"
    ds.KVP = 120
    ds.AcquisitionNumber = 1
    ds.PositionerType = "NONE"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.AcquisitionContextSequence = []
    ds.AnatomicRegionSequence = [_code("51185008", "SCT", "Chest")]
    ds.ViewCodeSequence = [_code("399348003", "SCT", "postero-anterior")]
    path = directory / "dx.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def read_header(path: Path) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)
