"""Images with a visible 'lesion' and report versions whose findings box it, for GSPS/KOS tests."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import MultiFrameGrayscaleWordSecondaryCaptureImageStorage, generate_uid

from shared.reports.domain import (
    ImageRef,
    PixelBox,
    RegionFindingResult,
    ReportSentence,
    ReportVersion,
    Signer,
    StudyHeader,
)
from tests.dicom.sr_sources import TEST_ROOT, write_dx

DRAFTED_AT = datetime(2026, 11, 30, 9, 41, 7)
SIGNED_AT = datetime(2026, 11, 30, 10, 5, 0)
BACKGROUND, LESION = 600, 3400
# The lesion (rows 60..139, columns 40..109) and the finding's box around it, in pixel edges.
LESION_BOX = PixelBox(40.0, 60.0, 110.0, 140.0)


def lesion_dx(directory: Path, *, window: bool = True, patient_name: str = "王^小明") -> Path:
    """A 200 x 160 DX: dark background, one bright rectangle where LESION_BOX is."""
    path = write_dx(
        directory, patient_name=patient_name, charset="ISO_IR 192", rows=200, columns=160
    )
    ds = pydicom.dcmread(path)
    pixels = np.full((200, 160), BACKGROUND, dtype=np.uint16)
    pixels[60:140, 40:110] = LESION
    ds.PixelData = pixels.tobytes()
    if not window:
        del ds.WindowCenter, ds.WindowWidth
    ds.save_as(path, enforce_file_format=True)
    return path


def multiframe_sc(directory: Path, frames: int = 3, *, study: Dataset | None = None) -> Path:
    """A multi-frame grayscale word secondary capture (64 x 64 per frame), windowed; in the
    study of `study` (patient and study attributes copied) when given."""
    template = pydicom.dcmread(write_dx(directory, rows=64, columns=64))
    ds = Dataset()
    ds.file_meta = template.file_meta
    ds.file_meta.MediaStorageSOPClassUID = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    uid = generate_uid(prefix=TEST_ROOT)
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    for keyword in (
        "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "PatientName",
        "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
        "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
        "BitsStored", "HighBit", "PixelRepresentation",
    ):  # fmt: skip
        setattr(ds, keyword, template.get(keyword))
    if study is not None:
        for keyword in ("StudyInstanceUID", "PatientName", "PatientID", "AccessionNumber"):
            setattr(ds, keyword, study.get(keyword))
        ds.SpecificCharacterSet = study.get("SpecificCharacterSet")
    ds.SOPClassUID = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    ds.SOPInstanceUID = uid
    ds.SeriesInstanceUID = generate_uid(prefix=TEST_ROOT)
    ds.Modality = "OT"
    ds.SeriesNumber = 2
    ds.InstanceNumber = 1
    ds.ConversionType = "WSD"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = (0x0018, 0x2001)  # Page Number Vector
    ds.PageNumberVector = list(range(1, frames + 1))
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.PixelData = np.zeros((frames, 64, 64), dtype=np.uint16).tobytes()
    path = directory / "multiframe.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def finding(
    image: Dataset,
    box: PixelBox | None = LESION_BOX,
    *,
    frame: int = 1,
    region: tuple[str, str, str] = ("right_lung", "right lung", "右肺"),
    what: tuple[str, str, str] | None = ("pleural_effusion", "pleural effusion", "胸腔积液"),
    probability: float | None = 0.9,
    review: Literal["proposed", "accepted", "rejected", "adjusted"] = "proposed",
) -> RegionFindingResult:
    return RegionFindingResult(
        region_code=region[0], region_name_en=region[1], region_name_zh=region[2],
        finding_code=what[0] if what else None,
        finding_name_en=what[1] if what else None,
        finding_name_zh=what[2] if what else None,
        probability=probability,
        image=ImageRef(str(image.SOPInstanceUID), str(image.SOPClassUID), frame),
        box=box, sentence_en="", sentence_zh="", review=review,
    )  # fmt: skip


def version_of(
    image: Dataset,
    findings: list[RegionFindingResult],
    *,
    status: Literal["draft", "signed", "corrected"] = "draft",
    report_id: int = 41,
    number: int = 1,
) -> ReportVersion:
    signed = status != "draft"
    return ReportVersion(
        report_id=report_id,
        version=number,
        status=status,
        study=StudyHeader(str(image.StudyInstanceUID)),
        domain="cxr",
        model_name="medrega-ref",
        model_version="1.2.0",
        created_at=DRAFTED_AT,
        findings=findings,
        sentences=[ReportSentence("impression", "Right pleural effusion.", "右侧胸腔积液。", [0])],
        signer=Signer("lwei", "Li^Wei", SIGNED_AT) if signed else None,
    )
