"""Which images of a study a model reads, decoded — the "global observation" step, shared by
every backend so the `onnx` and `mllm` backends read exactly the same pixels.

X-ray: the frontal views (PA/AP), else every X-ray image. CT/MR: every slice of the main axial
series (the longest), localizers and non-axial reformats left out. Images come back sorted
along the series.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from shared.dicom.pixels import DecodedFrame, PixelDataUnsupported, frames_from_dataset
from shared.inference.backend import InstanceInput, StudyInput
from shared.inference.contract import ImageRef

log = logging.getLogger(__name__)

FRONTAL_VIEWS = {"PA", "AP"}


class NotApplicable(Exception):
    """The study can't be drafted by this model; the message is the reason shown to users."""


@dataclass
class ReadImage:
    instance: InstanceInput
    frame: DecodedFrame
    position: float  # along the series (slice location or instance number)

    @property
    def ref(self) -> ImageRef:
        return ImageRef(
            self.instance.sop_instance_uid, self.instance.sop_class_uid, self.frame.frame
        )


def _is_localizer(ds: Dataset) -> bool:
    return any("LOCALIZER" in str(v).upper() for v in ds.get("ImageType", []))


def _is_axial(ds: Dataset) -> bool:
    orientation = ds.get("ImageOrientationPatient")
    if orientation is None or len(orientation) != 6:
        return True  # no geometry: don't second-guess the series
    normal = np.cross(np.array(orientation[:3], float), np.array(orientation[3:], float))
    return abs(normal[2]) > 0.8


def _position(ds: Dataset, instance: InstanceInput) -> float:
    position = ds.get("ImagePositionPatient")
    if position is not None and len(position) == 3:
        return float(position[2])
    return float(instance.instance_number or 0)


def select_images(
    study: StudyInput, supported_modalities: Collection[str], model_name: str
) -> list[tuple[InstanceInput, Dataset]]:
    """The instances to read, with their headers (raises NotApplicable with the reason)."""
    modalities = {i.modality for i in study.instances}
    candidates = [i for i in study.instances if i.modality in supported_modalities]
    if not candidates:
        found = ", ".join(sorted(m or "none" for m in modalities))
        raise NotApplicable(f"modality {found} is not supported by {model_name}")
    headers: list[tuple[InstanceInput, Dataset]] = []
    for instance in candidates:
        try:
            ds: Dataset = dcmread(instance.path)
        except (InvalidDicomError, OSError, ValueError) as exc:
            log.warning("unreadable instance %s: %s", instance.sop_instance_uid, exc)
            continue
        if "PixelData" in ds and not _is_localizer(ds):
            headers.append((instance, ds))
    if not headers:
        raise NotApplicable("no readable image in a supported modality")
    xray = [(i, ds) for i, ds in headers if i.modality in ("DX", "CR")]
    if xray:
        frontal = [(i, ds) for i, ds in xray if str(ds.get("ViewPosition", "")) in FRONTAL_VIEWS]
        return frontal or xray
    by_series: dict[str, list[tuple[InstanceInput, Dataset]]] = {}
    for instance, header in headers:
        if _is_axial(header):
            by_series.setdefault(instance.series_instance_uid, []).append((instance, header))
    if not by_series:
        raise NotApplicable("no axial series to read")
    return max(by_series.values(), key=len)  # the main axial series


def read_images(selected: list[tuple[InstanceInput, Dataset]]) -> list[ReadImage]:
    """Decode every frame (raises NotApplicable when none can be decoded, with the reason)."""
    images: list[ReadImage] = []
    reasons: list[str] = []
    for instance, ds in selected:
        try:
            frames = frames_from_dataset(ds)
        except PixelDataUnsupported as exc:
            reasons.append(str(exc))
            continue
        for frame in frames:
            images.append(ReadImage(instance, frame, _position(ds, instance)))
    if not images:
        raise NotApplicable(reasons[0] if reasons else "no decodable image")
    images.sort(key=lambda image: (image.position, image.frame.frame))
    return images
