"""Which images of a study a model reads, decoded — the "global observation" step, shared by
every backend so the `onnx` and `mllm` backends read exactly the same pixels.

X-ray: the frontal views (PA/AP), else every X-ray image. CT/MR: every slice of the main axial
series (the longest), localizers and non-axial reformats left out. Images come back sorted
along the series.

Also the study-level steps both backends share: lesions seen on neighbouring slices merged into
one finding, and a box's extent in millimetres.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from pydicom import Dataset, dcmread

from shared.dicom.pixels import DecodedFrame, PixelDataUnsupported, frames_from_dataset, read_frames
from shared.inference.backend import InstanceInput, StudyInput
from shared.reports.domain import ImageRef, PixelBox

log = logging.getLogger(__name__)

FRONTAL_VIEWS = {"PA", "AP"}
# Lesions on slices at most this far apart, overlapping at least this much, are one finding.
MERGE_SLICE_GAP = 2
MERGE_MIN_IOU = 0.2

T = TypeVar("T")
Box = Sequence[float]  # x1, y1, x2, y2 in source pixels


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

    def extent_mm(self, box: PixelBox) -> float | None:
        """The box's larger side in millimetres (None without pixel spacing)."""
        spacing = self.frame.pixel_spacing_mm
        if spacing is None:
            return None
        return max((box.x2 - box.x1) * spacing[1], (box.y2 - box.y1) * spacing[0])


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
    study: StudyInput,
    supported_modalities: Collection[str],
    model_name: str,
    *,
    defer_pixels: bool = False,
) -> list[tuple[InstanceInput, Dataset]]:
    """The instances to read, with their headers, CT/MR sorted along the series (raises
    NotApplicable with the reason). `defer_pixels`: the pixel data stays on disk until it is
    decoded (pydicom reads it then), so a long series' bytes are not all held at once."""
    modalities = {i.modality for i in study.instances}
    candidates = [i for i in study.instances if i.modality in supported_modalities]
    if not candidates:
        found = ", ".join(sorted(m or "none" for m in modalities))
        raise NotApplicable(f"modality {found} is not supported by {model_name}")
    headers: list[tuple[InstanceInput, Dataset]] = []
    for instance in candidates:
        try:
            ds: Dataset = dcmread(instance.path, defer_size="1 KB" if defer_pixels else None)
        except Exception as exc:  # pydicom raises many types on a broken file: skip it alone
            log.warning("unreadable instance %s: %s", instance.sop_instance_uid, type(exc).__name__)
            continue
        if "PixelData" in ds and not _is_localizer(ds):
            headers.append((instance, ds))
    if not headers:
        raise NotApplicable("no readable image in a supported modality")
    xray = [(i, ds) for i, ds in headers if i.modality in ("DX", "CR")]
    if xray:
        frontal = [(i, ds) for i, ds in xray if str(ds.get("ViewPosition", "")) in FRONTAL_VIEWS]
        return sorted(frontal or xray, key=lambda pair: _position(pair[1], pair[0]))
    by_series: dict[str, list[tuple[InstanceInput, Dataset]]] = {}
    for instance, header in headers:
        if _is_axial(header):
            by_series.setdefault(instance.series_instance_uid, []).append((instance, header))
    if not by_series:
        raise NotApplicable("no axial series to read")
    main = max(by_series.values(), key=len)  # the main axial series
    return sorted(main, key=lambda pair: _position(pair[1], pair[0]))


def position_of(ds: Dataset, instance: InstanceInput) -> float:
    """Where the image lies along its series (the sort key of `read_images`)."""
    return _position(ds, instance)


def _decoded(ds: Dataset) -> list[DecodedFrame] | Exception:
    """The frames, or the exception (raised again by `_assemble` for the study it belongs to,
    so one study's undecodable file does not fail the others read with it)."""
    try:
        return frames_from_dataset(ds)
    except Exception as exc:
        return exc


Mapper = Callable[..., Iterable[list[DecodedFrame] | Exception]]


def read_images(
    selected: list[tuple[InstanceInput, Dataset]], map_: Mapper = map
) -> list[ReadImage]:
    """Decode every frame (raises NotApplicable when none can be decoded, with the reason).
    `map_` decodes the instances (an executor's map decodes them in parallel threads: pixel
    decoding is numpy work that releases the GIL); the result is the same."""
    return _assemble(selected, list(map_(_decoded, [ds for _, ds in selected])))


def _assemble(
    selected: list[tuple[InstanceInput, Dataset]],
    decoded: list[list[DecodedFrame] | Exception],
) -> list[ReadImage]:
    images: list[tuple[ReadImage, int]] = []
    reasons: list[str] = []
    for index, ((instance, ds), frames) in enumerate(zip(selected, decoded, strict=True)):
        if isinstance(frames, PixelDataUnsupported):
            reasons.append(str(frames))
            continue
        if isinstance(frames, Exception):
            raise frames
        for frame in frames:
            images.append((ReadImage(instance, frame, _position(ds, instance)), index))
    if not images:
        raise NotApplicable(reasons[0] if reasons else "no decodable image")
    images.sort(key=image_order)
    return [image for image, _ in images]


def image_order(entry: tuple[ReadImage, int]) -> tuple[float, int, int]:
    """Along the series, then by instance (its place in the selection), then by frame: an
    instance's frames stay together where positions tie."""
    image, index = entry
    return image.position, index, image.frame.frame


def read_frame(instance: InstanceInput, frame: int) -> ReadImage:
    """One frame of one instance (the interactive tools); ValueError when out of range."""
    frames = read_frames(Path(instance.path))
    if not 1 <= frame <= len(frames):
        raise ValueError(f"frame {frame} out of range 1..{len(frames)}")
    return ReadImage(instance, frames[frame - 1], 0.0)


def thin_slices(items: list[T], limit: int) -> list[T]:
    """At most `limit` evenly spaced items, the central one always among them (0: all)."""
    if limit <= 0 or len(items) <= limit:
        return items
    centre = len(items) // 2
    if limit == 1:
        return [items[centre]]
    step = (len(items) - 1) / (limit - 1)
    picked = {round(k * step) for k in range(limit)}
    picked.add(centre)
    return [items[i] for i in sorted(picked)]


def box_iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def merge_across_slices(
    detections: Sequence[T],
    *,
    slice_of: Callable[[T], int],
    kind_of: Callable[[T], str],
    box_of: Callable[[T], Box],
    rank: Callable[[T], float],
) -> list[T]:
    """One finding per lesion: detections of one kind on slices at most MERGE_SLICE_GAP apart
    that overlap by MERGE_MIN_IOU are one cluster; each cluster is answered by its best-ranked
    detection (its key image). The onnx backend ranks by score, a served MedRegA (no scores)
    by box area."""
    clusters: list[list[T]] = []
    for detection in sorted(detections, key=rank, reverse=True):
        for cluster in clusters:
            if kind_of(cluster[0]) == kind_of(detection) and any(
                abs(slice_of(detection) - slice_of(other)) <= MERGE_SLICE_GAP
                and box_iou(box_of(detection), box_of(other)) >= MERGE_MIN_IOU
                for other in cluster
            ):
                cluster.append(detection)
                break
        else:
            clusters.append([detection])
    return [cluster[0] for cluster in clusters]
