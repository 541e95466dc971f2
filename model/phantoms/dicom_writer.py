"""Write a PhantomStudy as a real DICOM study: one file per image plus a ground-truth sidecar.

IODs: chest X-ray as DX Image Storage – For Presentation or CR Image Storage (chosen from the
seed, as hospitals have both), CT Image Storage, MR Image Storage. Everything that varies between
real scanners and that downstream code must cope with is drawn deterministically from
(domain, seed): DX vs CR, MONOCHROME1 vs MONOCHROME2, signed vs unsigned CT storage, 12- vs
16-bit MR, field strength, demographics, a missing Accession Number. UIDs are hashed from
(domain, seed) under PHANTOM_UID_ROOT, so writing the same phantom twice gives the same UIDs
(whatever the transfer syntax: a lossless re-encoding keeps its SOP Instance UID in DICOM too).

Pixel storage (the inverse of what a reader does, PS3.3 C.11):
- CT: stored = round(HU - intercept); unsigned 12-bit with intercept -1024, or signed 16-bit with
  intercept 0. HU outside the stored range is clipped.
- MR: stored = round(signal), unsigned 12- or 16-bit, no rescale (the MR IOD has none).
- X-ray: stored = round(value) in 0..4095; MONOCHROME1 stores 4095 - value and moves the window
  centre so that the displayed image is the same as the MONOCHROME2 one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_encoder
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from model.phantoms.demographics import Demographics, synthesize_demographics
from model.phantoms.types import Domain, PhantomImage, PhantomStudy

# Root for every UID the phantom writer makes. It sits under pydicom's root (which pydicom hands
# out for this kind of use); a site would substitute its own registered root.
PHANTOM_UID_ROOT = "1.2.826.0.1.3680043.8.498.7324."
IMPLEMENTATION_VERSION_NAME = "MEDREGA_PH_1"
MANUFACTURER = "medrega-pacs phantom"
GROUND_TRUTH_FILENAME = "ground_truth.json"
GROUND_TRUTH_FORMAT = "medrega-pacs/phantom-ground-truth"
GROUND_TRUTH_VERSION = 1

# Short names for the CLI and callers; all lossless, so pixels decode back exactly.
TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg-ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
}

CT_UNSIGNED_INTERCEPT = -1024.0


class TransferSyntaxUnavailableError(RuntimeError):
    """The requested transfer syntax has no usable encoder in this environment."""


@dataclass(frozen=True)
class WrittenStudy:
    """What write_study put on disk, for callers that send or check it."""

    study_dir: Path
    domain: Domain
    seed: int
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    modality: str  # DX, CR, CT or MR
    transfer_syntax_uid: str
    demographics: Demographics
    files: list[Path]  # in Instance Number order
    sop_instance_uids: list[str]  # same order as files
    ground_truth_path: Path
    finding_codes: list[str] = field(default_factory=list)

    @property
    def accession_number(self) -> str | None:
        return self.demographics.accession_number

    @property
    def patient_name(self) -> str:
        return self.demographics.patient_name


@dataclass(frozen=True)
class PixelStorage:
    """How physical values become stored values for one series."""

    bits_stored: int
    signed: bool
    rescale_intercept: float  # physical = stored * slope + intercept (slope is always 1 here)
    monochrome1: bool = False

    @property
    def stored_min(self) -> int:
        return -(1 << (self.bits_stored - 1)) if self.signed else 0

    @property
    def stored_max(self) -> int:
        return (1 << (self.bits_stored - 1)) - 1 if self.signed else (1 << self.bits_stored) - 1


@dataclass(frozen=True)
class AcquisitionProfile:
    """Per-study scanner variations, drawn from (domain, seed)."""

    storage: PixelStorage
    sop_class_uid: UID
    modality: str
    field_strength_t: float = 1.5
    kvp: float = 120.0


def resolve_transfer_syntax(transfer_syntax: str | UID) -> UID:
    """Map a short name or a UID to a UID and check that this environment can encode it."""
    by_name = TRANSFER_SYNTAXES.get(str(transfer_syntax).lower())
    uid = by_name or UID(str(transfer_syntax))
    if uid not in TRANSFER_SYNTAXES.values():
        known = ", ".join(f"{name} ({value})" for name, value in TRANSFER_SYNTAXES.items())
        raise ValueError(f"unsupported Transfer Syntax UID {transfer_syntax!r}; use one of {known}")
    if uid.is_compressed:
        encoder = get_encoder(uid)
        if not encoder.is_available:
            missing = "; ".join(encoder.missing_dependencies) or "no encoding plugin"
            raise TransferSyntaxUnavailableError(
                f"cannot encode {uid.name} ({uid}) here: {missing}"
            )
    return uid


def available_transfer_syntaxes() -> dict[str, UID]:
    """The subset of TRANSFER_SYNTAXES this environment can encode."""
    available = {}
    for name, uid in TRANSFER_SYNTAXES.items():
        try:
            available[name] = resolve_transfer_syntax(uid)
        except TransferSyntaxUnavailableError:
            continue
    return available


def phantom_uid(domain: Domain, seed: int, *parts: object) -> UID:
    """A UID that depends only on (domain, seed, parts)."""
    return generate_uid(
        prefix=PHANTOM_UID_ROOT,
        entropy_srcs=["medrega-phantom", domain, str(seed), *(str(part) for part in parts)],
    )


def _choice_rng(domain: Domain, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"dicom-writer|{domain}|{seed}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def acquisition_profile(domain: Domain, seed: int) -> AcquisitionProfile:
    """The scanner variations write_study uses for (domain, seed); tests pick seeds with it."""
    rng = _choice_rng(domain, seed)
    if domain == "cxr":
        is_cr = rng.random() < 0.3
        # CR readers very often send MONOCHROME1; DX detectors less so.
        monochrome1 = rng.random() < (0.6 if is_cr else 0.3)
        return AcquisitionProfile(
            storage=PixelStorage(
                bits_stored=12, signed=False, rescale_intercept=0.0, monochrome1=monochrome1
            ),
            sop_class_uid=ComputedRadiographyImageStorage
            if is_cr
            else DigitalXRayImageStorageForPresentation,
            modality="CR" if is_cr else "DX",
            kvp=float(rng.choice([110.0, 120.0, 125.0])),
        )
    if domain in ("chest_ct", "abd_ct"):
        signed = rng.random() < 0.5
        storage = (
            PixelStorage(bits_stored=16, signed=True, rescale_intercept=0.0)
            if signed
            else PixelStorage(bits_stored=12, signed=False, rescale_intercept=CT_UNSIGNED_INTERCEPT)
        )
        return AcquisitionProfile(
            storage=storage,
            sop_class_uid=CTImageStorage,
            modality="CT",
            kvp=float(rng.choice([100.0, 120.0])),
        )
    if domain == "brain_mr":
        return AcquisitionProfile(
            storage=PixelStorage(
                bits_stored=int(rng.choice([12, 16])), signed=False, rescale_intercept=0.0
            ),
            sop_class_uid=MRImageStorage,
            modality="MR",
            field_strength_t=float(rng.choice([1.5, 3.0])),
        )
    raise ValueError(f"unknown phantom domain {domain!r}")


def encode_pixels(pixels: np.ndarray, storage: PixelStorage) -> np.ndarray:
    """Physical float values → stored integers (uint16 or int16) for one image."""
    stored = np.rint(pixels.astype(np.float64) - storage.rescale_intercept)
    stored = np.clip(stored, storage.stored_min, storage.stored_max)
    if storage.monochrome1:
        stored = storage.stored_max - stored
    # DICOM pixel data is little endian whatever the host is.
    return stored.astype("<i2" if storage.signed else "<u2")


def _stored_window(window: tuple[float, float], storage: PixelStorage) -> tuple[float, float]:
    """Window (center, width) in the units the VOI LUT is applied to (after the modality LUT).

    For MONOCHROME1 the stored value is max - v; with PS3.3 C.11.2.1.2's linear function the
    displayed (inverted) output equals the MONOCHROME2 one exactly when center' = max + 1 - center.
    """
    center, width = window
    if storage.monochrome1:
        center = storage.stored_max + 1 - center
    return center, width


def _ds(value: float) -> str:
    """A float formatted to fit a DS (16 characters)."""
    return format_number_as_ds(float(round(value, 6)))


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


_BODY_PART: dict[Domain, str] = {
    "cxr": "CHEST",
    "chest_ct": "CHEST",
    "abd_ct": "ABDOMEN",
    "brain_mr": "HEAD",
}
_STUDY_DESCRIPTION: dict[Domain, str] = {
    "cxr": "XR CHEST PA",
    "chest_ct": "CT CHEST WITHOUT CONTRAST",
    "abd_ct": "CT ABDOMEN WITHOUT CONTRAST",
    "brain_mr": "MR BRAIN",
}
# Anatomic Region Sequence codes (SNOMED CT, CID 4031 Common Anatomic Regions).
_ANATOMIC_REGION: dict[Domain, tuple[str, str]] = {
    "cxr": ("51185008", "Chest"),
    "chest_ct": ("51185008", "Chest"),
    "abd_ct": ("818981001", "Abdomen"),
    "brain_mr": ("12738006", "Brain"),
}
_SERIES_NUMBER: dict[Domain, int] = {"cxr": 1, "chest_ct": 2, "abd_ct": 2, "brain_mr": 3}


def _series_key(study: PhantomStudy) -> tuple[str, int, int, int]:
    """What, besides (domain, seed), tells two renderings of a phantom apart: slice count and
    matrix size.

    The same seed written with 2 and with 40 slices (or at a reduced matrix) holds different
    images, so reusing SOP Instance UIDs would make a PACS treat different pixels as the same
    instance. Instead both land in the same study (same patient, same Study Instance UID) as two
    series, the way a thin and a thick reconstruction of one scan do.
    """
    rows, columns = study.images[0].pixels.shape
    return ("series", len(study.images), int(rows), int(columns))


def _study_level(ds: Dataset, study: PhantomStudy, demographics: Demographics) -> None:
    """Patient, General Study, Patient Study modules."""
    ds.PatientName = demographics.patient_name
    ds.PatientID = demographics.patient_id
    ds.IssuerOfPatientID = "MEDREGA-PHANTOM"
    ds.PatientBirthDate = demographics.patient_birth_date
    ds.PatientSex = demographics.patient_sex
    ds.PatientIdentityRemoved = "NO"

    ds.StudyInstanceUID = phantom_uid(study.domain, study.seed, "study")
    ds.StudyDate = demographics.study_date
    ds.StudyTime = demographics.study_time
    ds.ReferringPhysicianName = demographics.referring_physician_name
    ds.StudyID = demographics.study_id
    # Type 2: present even when the hospital sent none.
    ds.AccessionNumber = demographics.accession_number or ""
    ds.StudyDescription = _STUDY_DESCRIPTION[study.domain]

    ds.PatientAge = demographics.patient_age
    ds.PatientSize = _ds(demographics.patient_size_m)
    ds.PatientWeight = _ds(demographics.patient_weight_kg)


def _series_level(
    ds: Dataset, study: PhantomStudy, profile: AcquisitionProfile, series_time: str
) -> None:
    """General Series, General Equipment, and for CT/MR the Frame of Reference modules."""
    ds.Modality = profile.modality
    ds.SeriesInstanceUID = phantom_uid(study.domain, study.seed, *_series_key(study))
    ds.SeriesNumber = _SERIES_NUMBER[study.domain]
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = series_time
    ds.BodyPartExamined = _BODY_PART[study.domain]
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = f"phantom-{profile.modality.lower()}"
    ds.DeviceSerialNumber = f"PH-{profile.modality}-001"
    ds.SoftwareVersions = "medrega-pacs 0.1.0"
    ds.StationName = f"PHANTOM{profile.modality}1"
    if profile.modality in ("CT", "MR"):
        ds.PatientPosition = "HFS"
        ds.FrameOfReferenceUID = phantom_uid(study.domain, study.seed, "frame-of-reference")
        ds.PositionReferenceIndicator = ""


def _image_pixel(ds: Dataset, image: PhantomImage, storage: PixelStorage) -> np.ndarray:
    """Image Pixel module attributes; returns the stored array for the caller to encode."""
    stored = encode_pixels(image.pixels, storage)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if storage.monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = (int(size) for size in stored.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = storage.bits_stored
    ds.HighBit = storage.bits_stored - 1
    ds.PixelRepresentation = 1 if storage.signed else 0
    ds.PixelData = stored.tobytes()
    return stored


def _voi_lut(ds: Dataset, image: PhantomImage, storage: PixelStorage, explanation: str) -> None:
    center, width = _stored_window(image.window, storage)
    ds.WindowCenter = _ds(center)
    ds.WindowWidth = _ds(max(width, 1.0))
    ds.WindowCenterWidthExplanation = explanation


def _axial_plane(ds: Dataset, image: PhantomImage) -> None:
    """Image Plane module for an axial slice centred on the patient's z axis (LPS)."""
    row_spacing, column_spacing = image.pixel_spacing_mm
    rows, columns = image.pixels.shape
    ds.PixelSpacing = [_ds(row_spacing), _ds(column_spacing)]
    # Rows run to the patient's left (+x), columns to posterior (+y): the radiological view.
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.ImagePositionPatient = [
        _ds(-(columns - 1) / 2 * column_spacing),
        _ds(-(rows - 1) / 2 * row_spacing),
        _ds(image.slice_position_mm),
    ]
    ds.SliceThickness = _ds(image.slice_thickness_mm) if image.slice_thickness_mm > 0 else ""
    ds.SliceLocation = _ds(image.slice_position_mm)


def _ct_image(
    ds: Dataset, study: PhantomStudy, image: PhantomImage, profile: AcquisitionProfile
) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.RescaleIntercept = _ds(profile.storage.rescale_intercept)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.KVP = _ds(profile.kvp)
    ds.AcquisitionNumber = 1
    ds.ScanOptions = "HELICAL"
    rows, columns = image.pixels.shape
    reconstruction_diameter = max(
        columns * image.pixel_spacing_mm[1], rows * image.pixel_spacing_mm[0]
    )
    ds.DataCollectionDiameter = _ds(500.0)
    ds.ReconstructionDiameter = _ds(reconstruction_diameter)
    ds.DistanceSourceToDetector = "1085.6"
    ds.DistanceSourceToPatient = "595"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "160"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "500"
    ds.XRayTubeCurrent = 200 if study.domain == "chest_ct" else 250
    ds.ConvolutionKernel = "LUNG" if study.domain == "chest_ct" else "STANDARD"
    ds.FilterType = "BODY FILTER"
    ds.GeneratorPower = 30
    ds.FocalSpots = "1.2"
    ds.SpiralPitchFactor = 0.984375
    ds.CTDIvol = 6.5 if study.domain == "chest_ct" else 12.0
    # CTDIvol means nothing without the phantom it refers to: 32 cm body phantom.
    ds.CTDIPhantomTypeCodeSequence = DicomSequence(
        [_code("113691", "DCM", "IEC Body Dosimetry Phantom")]
    )
    ds.TableSpeed = 39.375
    ds.TotalCollimationWidth = 40.0
    ds.SingleCollimationWidth = 0.625


def _mr_image(
    ds: Dataset,
    image: PhantomImage,
    profile: AcquisitionProfile,
    spacing_between_slices_mm: float | None,
) -> None:
    # A T2-weighted turbo spin echo: the commonest axial brain sequence, and the contrast the
    # phantom draws (bright CSF, grey matter brighter than white matter).
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = ["SK", "SP"]
    ds.ScanOptions = "FC"  # flow compensation, usual on T2 brain
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = "*tse2d1_15"
    ds.AngioFlag = "N"
    ds.RepetitionTime = _ds(4000.0 if profile.field_strength_t < 2 else 5000.0)
    ds.EchoTime = _ds(95.0)
    ds.EchoTrainLength = 15
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = _ds(42.577478 * profile.field_strength_t)
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = _ds(profile.field_strength_t)
    if spacing_between_slices_mm is not None:
        ds.SpacingBetweenSlices = _ds(spacing_between_slices_mm)
    ds.NumberOfPhaseEncodingSteps = int(image.pixels.shape[0])
    ds.PercentSampling = "100"
    ds.PercentPhaseFieldOfView = "100"
    ds.PixelBandwidth = "220"
    ds.TransmitCoilName = "Body"
    ds.ReceiveCoilName = "Head 20"
    rows, columns = image.pixels.shape
    # (frequency rows, frequency columns, phase rows, phase columns): phase along the rows axis.
    ds.AcquisitionMatrix = [0, int(columns), int(rows), 0]
    ds.InPlanePhaseEncodingDirection = "COL"
    ds.FlipAngle = "150"
    ds.VariableFlipAngleFlag = "N"
    ds.SAR = "0.5"
    ds.dBdt = "0"
    ds.AcquisitionNumber = 1


def _xray_image(
    ds: Dataset, study: PhantomStudy, image: PhantomImage, profile: AcquisitionProfile
) -> None:
    """DX (For Presentation) or CR image attributes for a PA chest radiograph."""
    row_spacing, column_spacing = image.pixel_spacing_mm
    spacing = [_ds(row_spacing), _ds(column_spacing)]
    region_code, region_meaning = _ANATOMIC_REGION[study.domain]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    # Patient's right on the image's left: rows run to the patient's left, columns to the feet.
    ds.PatientOrientation = ["L", "F"]
    ds.ViewPosition = "PA"
    ds.ImagerPixelSpacing = spacing
    ds.KVP = _ds(profile.kvp)
    ds.ExposureTime = 8
    ds.XRayTubeCurrent = 250
    ds.Exposure = 2
    ds.DistanceSourceToDetector = "1800"
    ds.AcquisitionNumber = 1
    if profile.modality == "CR":
        ds.PixelSpacing = spacing
        ds.PlateType = "PHANTOM"
        ds.Sensitivity = "200"
        return

    # The CR IOD has no View Code Sequence; DX readers use it in preference to View Position.
    ds.ViewCodeSequence = DicomSequence([_code("399348003", "SCT", "postero-anterior")])
    ds.ViewCodeSequence[0].ViewModifierCodeSequence = DicomSequence()

    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = "U"  # chest: unpaired body part
    ds.AnatomicRegionSequence = DicomSequence([_code(region_code, "SCT", region_meaning)])
    ds.PixelIntensityRelationship = "LOG"
    # +1: lower stored values mean less X-ray intensity reached the detector. The phantom value
    # grows with attenuation, so that holds once it is inverted (MONOCHROME1), not before.
    ds.PixelIntensityRelationshipSign = 1 if profile.storage.monochrome1 else -1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE" if profile.storage.monochrome1 else "IDENTITY"
    ds.DetectorType = "SCINTILLATOR"
    ds.DetectorConfiguration = "AREA"
    ds.DetectorID = "PHANTOM-DET-1"
    ds.DetectorElementSpacing = spacing
    ds.DetectorElementPhysicalSize = spacing
    ds.FieldOfViewShape = "RECTANGLE"
    rows, columns = image.pixels.shape
    ds.FieldOfViewDimensions = [
        int(round(rows * row_spacing)),
        int(round(columns * column_spacing)),
    ]
    ds.PositionerType = "COLUMN"
    ds.AcquisitionContextSequence = DicomSequence()
    ds.PixelSpacing = spacing
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "phantom geometry"


def _slice_spacing(study: PhantomStudy) -> float | None:
    positions = sorted({image.slice_position_mm for image in study.images})
    if len(positions) < 2:
        return None
    return float(np.median(np.diff(positions)))


def _series_description(study: PhantomStudy, modality: str) -> str:
    if study.domain == "cxr":
        return "CHEST PA"
    thickness = study.images[0].slice_thickness_mm if study.images else 0.0
    if modality == "CT":
        return f"AX {thickness:.1f}mm"
    return f"AX T2 TSE {thickness:.1f}mm"


def _build_dataset(
    study: PhantomStudy,
    image: PhantomImage,
    instance_number: int,
    demographics: Demographics,
    profile: AcquisitionProfile,
    transfer_syntax: UID,
) -> Dataset:
    ds = Dataset()
    if demographics.has_non_ascii_text:
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = profile.sop_class_uid
    ds.SOPInstanceUID = phantom_uid(
        study.domain, study.seed, *_series_key(study), "instance", instance_number
    )
    ds.InstanceCreationDate = demographics.study_date
    ds.InstanceCreationTime = demographics.study_time
    ds.InstanceNumber = instance_number

    _study_level(ds, study, demographics)
    start = dt.datetime.strptime(demographics.study_date + demographics.study_time, "%Y%m%d%H%M%S")
    series_start = start + dt.timedelta(minutes=2)
    _series_level(ds, study, profile, series_start.strftime("%H%M%S"))
    ds.SeriesDescription = _series_description(study, profile.modality)
    ds.InstitutionName = demographics.institution_name

    acquired = series_start + dt.timedelta(seconds=instance_number - 1)
    ds.ContentDate = acquired.strftime("%Y%m%d")
    ds.ContentTime = acquired.strftime("%H%M%S")
    ds.AcquisitionDate = ds.ContentDate
    ds.AcquisitionTime = ds.ContentTime

    stored = _image_pixel(ds, image, profile.storage)
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    if profile.modality == "CT":
        _axial_plane(ds, image)
        _ct_image(ds, study, image, profile)
    elif profile.modality == "MR":
        _axial_plane(ds, image)
        _mr_image(ds, image, profile, _slice_spacing(study))
    else:
        _xray_image(ds, study, image, profile)
    _voi_lut(ds, image, profile.storage, "PHANTOM DEFAULT")

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = UID(PHANTOM_UID_ROOT + "1")
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if transfer_syntax != ExplicitVRLittleEndian:
        # Lossless only, so the SOP Instance UID must stay the same (PS3.5 8.2).
        ds.compress(transfer_syntax, stored, generate_instance_uid=False)
    return ds


def _box(box: Sequence[float]) -> list[float]:
    # Not rounded: JSON keeps a float exactly, and the evaluation's IoU should see the truth.
    return [float(coordinate) for coordinate in box]


def ground_truth_document(
    study: PhantomStudy,
    datasets: Sequence[Dataset],
    files: Sequence[Path],
    demographics: Demographics,
) -> dict[str, Any]:
    """The sidecar content; boxes are in each image's source-pixel coordinates (x1, y1, x2, y2)."""
    instances: dict[str, Any] = {}
    for image, ds, path in zip(study.images, datasets, files, strict=True):
        instances[str(ds.SOPInstanceUID)] = {
            "file": path.name,
            "instance_number": int(ds.InstanceNumber),
            "slice_index": image.slice_index,
            "slice_position_mm": image.slice_position_mm,
            "rows": int(ds.Rows),
            "columns": int(ds.Columns),
            "pixel_spacing_mm": [float(spacing) for spacing in image.pixel_spacing_mm],
            "slice_thickness_mm": image.slice_thickness_mm,
            "window": [float(value) for value in image.window],  # physical units
            "regions": [{"code": region.code, "box": _box(region.box)} for region in image.regions],
            "findings": [
                {
                    "code": finding.code,
                    "region_code": finding.region_code,
                    "box": _box(finding.box),
                    "size_mm": finding.size_mm,
                }
                for finding in image.findings
            ],
        }
    first = datasets[0]
    return {
        "format": GROUND_TRUTH_FORMAT,
        "version": GROUND_TRUTH_VERSION,
        "domain": study.domain,
        "seed": study.seed,
        "modality": str(first.Modality),
        "sop_class_uid": str(first.SOPClassUID),
        "transfer_syntax_uid": str(first.file_meta.TransferSyntaxUID),
        "study_instance_uid": str(first.StudyInstanceUID),
        "series_instance_uid": str(first.SeriesInstanceUID),
        "accession_number": demographics.accession_number,
        "patient_id": demographics.patient_id,
        "patient_name": demographics.patient_name,
        "photometric_interpretation": str(first.PhotometricInterpretation),
        "is_normal": study.is_normal,
        "findings": [
            {"code": finding.code, "region_code": finding.region_code, "size_mm": finding.size_mm}
            for finding in study.findings
        ],
        "instances": instances,
    }


def write_study(
    study: PhantomStudy,
    out_dir: str | Path,
    *,
    transfer_syntax: str | UID = ExplicitVRLittleEndian,
    demographics: Demographics | None = None,
) -> WrittenStudy:
    """Write `study` into `out_dir` (created if needed) as IM0001.dcm… plus ground_truth.json.

    `transfer_syntax` is a UID or a short name from TRANSFER_SYNTAXES. `demographics` defaults
    to the deterministic synthetic ones for (domain, seed). Raises TransferSyntaxUnavailableError
    before writing anything if the syntax cannot be encoded here.
    """
    if not study.images:
        raise ValueError("PhantomStudy has no images to write")
    transfer_syntax_uid = resolve_transfer_syntax(transfer_syntax)
    demographics = demographics or synthesize_demographics(study.domain, study.seed)
    profile = acquisition_profile(study.domain, study.seed)

    study_dir = Path(out_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    datasets: list[Dataset] = []
    files: list[Path] = []
    for instance_number, image in enumerate(study.images, start=1):
        ds = _build_dataset(
            study, image, instance_number, demographics, profile, transfer_syntax_uid
        )
        path = study_dir / f"IM{instance_number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        datasets.append(ds)
        files.append(path)

    ground_truth_path = study_dir / GROUND_TRUTH_FILENAME
    document = ground_truth_document(study, datasets, files, demographics)
    ground_truth_path.write_text(
        json.dumps(document, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    return WrittenStudy(
        study_dir=study_dir,
        domain=study.domain,
        seed=study.seed,
        study_instance_uid=str(datasets[0].StudyInstanceUID),
        series_instance_uid=str(datasets[0].SeriesInstanceUID),
        sop_class_uid=str(profile.sop_class_uid),
        modality=profile.modality,
        transfer_syntax_uid=str(transfer_syntax_uid),
        demographics=demographics,
        files=files,
        sop_instance_uids=[str(ds.SOPInstanceUID) for ds in datasets],
        ground_truth_path=ground_truth_path,
        finding_codes=[finding.code for finding in study.findings],
    )
