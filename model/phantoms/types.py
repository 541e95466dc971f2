"""Data types shared by the phantom generator, the DICOM writer, training and evaluation.

Coordinates: every box is (x1, y1, x2, y2) in *source-image pixel* coordinates of the image it
belongs to, x to the right (columns), y down (rows), x2/y2 exclusive edges as floats. The patient's
right is on the image's left (radiological convention); images are never flipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Domain = Literal["cxr", "chest_ct", "abd_ct", "brain_mr"]
DOMAINS: tuple[Domain, ...] = ("cxr", "chest_ct", "abd_ct", "brain_mr")

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class RegionBox:
    """Ground truth for one visible anatomical region on one image."""

    code: str  # region code from shared/vocab/regions.json
    box: Box


@dataclass(frozen=True)
class FindingBox:
    """Ground truth for one abnormality on one image."""

    code: str  # finding code from shared/vocab/findings.json
    region_code: str  # region it lies in
    box: Box
    size_mm: float  # longest in-plane diameter in millimetres


@dataclass
class PhantomImage:
    """One 2D image (an X-ray, or one axial slice of a CT/MR series).

    `pixels` holds physical values as float32 of shape (rows, cols): Hounsfield units for CT,
    arbitrary MR signal (0..~1000) for MR, and for X-ray a display-ready value in 0..4095 where
    higher means brighter (more attenuation, MONOCHROME2 sense). The DICOM writer chooses the
    stored representation (bits, rescale, MONOCHROME1 inversion) from these.
    """

    pixels: np.ndarray
    pixel_spacing_mm: tuple[float, float]  # (row spacing, column spacing)
    window: tuple[float, float]  # suggested (center, width) in physical units
    regions: list[RegionBox] = field(default_factory=list)
    findings: list[FindingBox] = field(default_factory=list)
    slice_index: int = 0
    slice_position_mm: float = 0.0  # z of the slice centre (patient coordinate system)
    slice_thickness_mm: float = 0.0


@dataclass(frozen=True)
class StudyFinding:
    """A study-level finding (what a report would mention once)."""

    code: str
    region_code: str
    size_mm: float


@dataclass
class PhantomStudy:
    domain: Domain
    seed: int
    images: list[PhantomImage]
    findings: list[StudyFinding]  # empty for a normal study

    @property
    def is_normal(self) -> bool:
        return not self.findings
