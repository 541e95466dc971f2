"""Small DICOM files for the PACS tests, made here so these tests depend on no other generator."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from shared.dicom.uids import new_uid

COMPREHENSIVE_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"
# A vendor root other than ours (pydicom's), so test images never look like our own output.
FOREIGN_UID_PREFIX = "1.2.826.0.1.3680043.8.498."


@dataclass(frozen=True)
class StudyIdentity:
    study_instance_uid: str
    patient_id: str
    patient_name: str
    specific_character_set: str = "ISO_IR 192"


def new_study(patient_name: str = "Test^Routing", patient_id: str | None = None) -> StudyIdentity:
    return StudyIdentity(
        study_instance_uid=generate_uid(prefix=FOREIGN_UID_PREFIX),
        patient_id=patient_id or f"PACS{generate_uid()[-8:]}",
        patient_name=patient_name,
    )


def _base_dataset(study: StudyIdentity, sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = file_meta
    ds.SpecificCharacterSet = study.specific_character_set
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = study.study_instance_uid
    ds.PatientID = study.patient_id
    ds.PatientName = study.patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = study.patient_id[-8:]
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    return ds


def write_ct_series(
    directory: Path,
    study: StudyIdentity,
    count: int,
    *,
    series_instance_uid: str | None = None,
    first_instance_number: int = 1,
) -> list[tuple[Path, str]]:
    """`count` tiny CT slices in one series; returns (path, SOP Instance UID) pairs."""
    directory.mkdir(parents=True, exist_ok=True)
    series_uid = series_instance_uid or generate_uid(prefix=FOREIGN_UID_PREFIX)
    written: list[tuple[Path, str]] = []
    for offset in range(count):
        sop_instance_uid = generate_uid(prefix=FOREIGN_UID_PREFIX)
        ds = _base_dataset(study, CTImageStorage, sop_instance_uid)
        number = first_instance_number + offset
        ds.SeriesInstanceUID = series_uid
        ds.Modality = "CT"
        ds.Manufacturer = "ACME Scanners"
        ds.SeriesNumber = 1
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [0.0, 0.0, float(number)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 1.0
        ds.Rows = ds.Columns = 16
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.PixelData = np.full((16, 16), number, dtype=np.uint16).tobytes()
        path = directory / f"ct-{sop_instance_uid}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append((path, sop_instance_uid))
    return written


def write_own_sr(
    directory: Path, study: StudyIdentity, *, manufacturer: str = "medrega-pacs"
) -> tuple[Path, str]:
    """A Comprehensive SR as our worker sends it back: SOP Instance UID under our root."""
    directory.mkdir(parents=True, exist_ok=True)
    sop_instance_uid = new_uid()
    ds = _base_dataset(study, COMPREHENSIVE_SR_STORAGE, sop_instance_uid)
    ds.SeriesInstanceUID = new_uid()
    ds.Modality = "SR"
    ds.Manufacturer = manufacturer
    ds.SeriesNumber = 9001
    ds.InstanceNumber = 1
    ds.ContentDate = "20260101"
    ds.ContentTime = "120500"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "PARTIAL"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PreliminaryFlag = "PRELIMINARY"
    title = Dataset()
    title.CodeValue = "126000"
    title.CodingSchemeDesignator = "DCM"
    title.CodeMeaning = "Imaging Measurement Report"
    ds.ConceptNameCodeSequence = [title]
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "1500"
    ds.ContentTemplateSequence = [template]
    ds.ContentSequence = []
    path = directory / f"sr-{sop_instance_uid}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, sop_instance_uid
