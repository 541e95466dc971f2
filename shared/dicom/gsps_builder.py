"""The findings' boxes for any PACS viewer: one Grayscale Softcopy Presentation State per key image.

A viewer that knows nothing of TID 1500 SRs still applies a GSPS (PS3.3 A.33.1) when the user
opens it: the image with its window, each finding's box as a closed POLYLINE in PIXEL units
(DICOM has no rectangle) and the finding's bilingual label as a text object above the box, in
one graphic layer "AI FINDINGS". Frames of a multi-frame image each get their own Graphic
Annotation item (Referenced Frame Number), so a box shows on its frame only.

Draft or signed is in Content Label (AI_DRAFT / SIGNED / CORRECTED, what PACS lists show) and in
Content Description. The window is the image's own (highdicom copies Window Center/Width or the
VOI LUT Sequence); an image without one gets the range of its stored pixels, so it never shows
as a flat grey. UIDs come from (report id, version, image) (shared/reports/message_ids.py):
re-sending a version stores the same instances again, never a second copy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import highdicom as hd
import numpy as np
from highdicom._standard_utils import is_multiframe_image  # the rule highdicom itself applies
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from shared.dicom.presentation_common import (
    MANUFACTURER,
    body_part,
    content_moment,
    document_status,
    finding_label,
    finish,
    images_by_uid,
    key_findings,
    source_image,
)
from shared.reports.domain import Language, RegionFindingResult, ReportVersion
from shared.reports.key_images import key_image_uids
from shared.reports.message_ids import gsps_uids

LAYER = hd.pr.GraphicLayer(
    layer_name="AI FINDINGS",
    order=1,
    description="Findings of the report (boxes and labels)",
    display_color=hd.color.CIELabColor.from_string("yellow"),
)
SERIES_NUMBER = {"P": 9911, "F": 9912, "C": 9913}
SERIES_DESCRIPTION = {
    "P": "AI draft findings (boxes)",
    "F": "Signed report findings (boxes)",
    "C": "Corrected report findings (boxes)",
}
_MAX_LABEL = 64  # ST allows more; viewers draw one line
# A label's width in label heights per character: CJK characters are square, Latin ones about
# half as wide (a bounding box the text fits, for viewers that scale text into it).
_CJK_WIDTH, _LATIN_WIDTH = 1.0, 0.55


def boxed_findings(version: ReportVersion) -> list[RegionFindingResult]:
    """The findings a GSPS draws: key findings with a box."""
    return [f for f in key_findings(version) if f.box is not None]


def presentation_state_uids(version: ReportVersion) -> list[str]:
    """SOP Instance UIDs of the version's presentation states, without building them (the ORU
    points at them)."""
    return [
        gsps_uids(version.report_id, version.version, uid).sop_instance_uid
        for uid in key_image_uids(boxed_findings(version))
    ]


def build_presentation_states(
    version: ReportVersion,
    images: Iterable[Dataset],
    *,
    languages: tuple[Language, ...] = ("en", "zh"),
    institution_name: str | None = None,
) -> list[hd.pr.GrayscaleSoftcopyPresentationState]:
    """One GSPS per key image of `version`; `images` are the key images' datasets (headers
    suffice when they carry a window; otherwise the pixels are read for one)."""
    by_uid = images_by_uid(images)
    findings = boxed_findings(version)
    status = document_status(version)
    per_image: dict[str, list[RegionFindingResult]] = defaultdict(list)
    for finding in findings:
        image = source_image(by_uid, finding)
        _check_box(finding, image)
        per_image[str(image.SOPInstanceUID)].append(finding)
    states = []
    for number, (image_uid, image_findings) in enumerate(per_image.items(), start=1):
        image = _highdicom_view(by_uid[image_uid])
        uids = gsps_uids(version.report_id, version.version, image_uid)
        count = len(image_findings)
        state = hd.pr.GrayscaleSoftcopyPresentationState(
            referenced_images=[image],
            series_instance_uid=uids.series_instance_uid,
            series_number=SERIES_NUMBER[version.result_status],
            sop_instance_uid=uids.sop_instance_uid,
            instance_number=number,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=version.model_name,
            software_versions=version.model_version,
            device_serial_number="",
            content_label=status.content_label,
            content_description=(f"{status.summary}: {count} finding{'s' if count > 1 else ''}")[
                :64
            ],
            graphic_layers=[LAYER],
            graphic_annotations=_annotations(image, image_findings, languages),
            institution_name=institution_name,
            content_creator_name=version.signer.name_pn if version.signer else None,
            voi_lut_transformations=_window_from_pixels(image),
            specific_character_set=None,  # decided in finish() from what we wrote
            series_description=SERIES_DESCRIPTION[version.result_status],
        )
        state.BodyPartExamined = body_part(image, version.domain)
        for layer in state.GraphicLayerSequence:  # white on a grayscale-only display
            layer.GraphicLayerRecommendedDisplayGrayscaleValue = 0xFFFF
        finish(state, content_moment(version))
        states.append(state)
    return states


def _annotations(
    image: Dataset, findings: Sequence[RegionFindingResult], languages: tuple[Language, ...]
) -> list[hd.pr.GraphicAnnotation]:
    per_frame: dict[int | None, list[RegionFindingResult]] = defaultdict(list)
    multiframe = is_multiframe_image(image)
    for finding in findings:
        assert finding.image is not None
        per_frame[finding.image.frame if multiframe else None].append(finding)
    annotations = []
    for frame, frame_findings in per_frame.items():
        annotations.append(
            hd.pr.GraphicAnnotation(
                referenced_images=[image],
                graphic_layer=LAYER,
                referenced_frame_number=frame,
                graphic_objects=[_box(f) for f in frame_findings],
                text_objects=[_label(f, image, languages) for f in frame_findings],
            )
        )
    return annotations


def _box(finding: RegionFindingResult) -> hd.pr.GraphicObject:
    assert finding.box is not None
    return hd.pr.GraphicObject(
        graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array(finding.box.polyline(), dtype=np.float64),
        units=hd.pr.AnnotationUnitsValues.PIXEL,
    )


def _label(
    finding: RegionFindingResult, image: Dataset, languages: tuple[Language, ...]
) -> hd.pr.TextObject:
    """The label in a band just above the box (below it when the box touches the top edge),
    starting at the box's left edge and as wide as the text needs (moved left where the image
    ends), so a viewer that fits text to its bounding box keeps it legible."""
    box = finding.box
    assert box is not None
    text = finding_label(finding, languages)
    if len(text) > _MAX_LABEL:
        text = text[: _MAX_LABEL - 1] + "…"
    columns, rows = float(image.Columns), float(image.Rows)
    height = max(8.0, min(rows / 24.0, 40.0))
    top = box.y1 - height if box.y1 - height >= 0 else min(box.y2, rows - height)
    width = min(
        columns, height * sum(_CJK_WIDTH if ord(c) > 0x2E7F else _LATIN_WIDTH for c in text)
    )
    left = max(0.0, min(box.x1, columns - width))
    return hd.pr.TextObject(
        text_value=text,
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        bounding_box=(left, max(top, 0.0), left + width, max(top, 0.0) + height),
        text_justification=hd.pr.TextJustificationValues.LEFT,
    )


def _check_box(finding: RegionFindingResult, image: Dataset) -> None:
    box = finding.box
    assert box is not None and finding.image is not None
    if box.x1 < 0 or box.y1 < 0 or box.x2 > image.Columns or box.y2 > image.Rows:
        raise ValueError(
            f"{finding.region_code}/{finding.finding_code}: box ({box.x1}, {box.y1}, {box.x2}, "
            f"{box.y2}) outside the image's Columns x Rows {image.Columns} x {image.Rows}"
        )
    frames = int(image.get("NumberOfFrames") or 1)
    if not 1 <= finding.image.frame <= frames:
        raise ValueError(
            f"{finding.region_code}/{finding.finding_code}: frame {finding.image.frame} outside "
            f"1..{frames} of {image.SOPInstanceUID}"
        )


def _window_from_pixels(image: Dataset) -> list[hd.pr.SoftcopyVOILUTTransformation] | None:
    """None where the image has its own window (highdicom copies it); else the stored pixels'
    range after the modality LUT, which needs the pixels."""
    if has_window(image):
        return None
    if "PixelData" not in image:
        raise ValueError(
            f"image {image.SOPInstanceUID} has no window (Window Center/Width or VOI LUT "
            "Sequence) and its pixels were not read: pass the full dataset"
        )
    values = apply_modality_lut(image.pixel_array, image)
    low, high = float(np.min(values)), float(np.max(values))
    width = max(high - low, 1.0)
    return [
        hd.pr.SoftcopyVOILUTTransformation(
            window_center=low + width / 2.0,
            window_width=width,
            window_explanation="range of the stored pixels",
        )
    ]


def _highdicom_view(image: Dataset) -> Dataset:
    """highdicom reads the rescale and window of any multi-frame image from its Shared
    Functional Groups, which only enhanced IODs have; a legacy multi-frame image (secondary
    capture, NM, US) gets a view with its top-level values there."""
    if not is_multiframe_image(image) or "SharedFunctionalGroupsSequence" in image:
        return image
    shared = Dataset()
    if "RescaleSlope" in image:
        rescale = Dataset()
        rescale.RescaleSlope = image.RescaleSlope
        rescale.RescaleIntercept = image.get("RescaleIntercept", 0)
        rescale.RescaleType = image.get("RescaleType") or "US"
        shared.PixelValueTransformationSequence = [rescale]
    if "WindowCenter" in image:
        window = Dataset()
        window.WindowCenter = image.WindowCenter
        window.WindowWidth = image.WindowWidth
        shared.FrameVOILUTSequence = [window]
    view = Dataset()
    view.update(image)  # a new element dict: the image itself is not changed
    view.SharedFunctionalGroupsSequence = [shared]
    view.PerFrameFunctionalGroupsSequence = [Dataset() for _ in range(image.NumberOfFrames)]
    return view


def has_window(image: Dataset) -> bool:
    """The image names its own window (or VOI LUT): its header is enough for the GSPS."""
    if "WindowCenter" in image or "VOILUTSequence" in image:
        return True
    for group in image.get("SharedFunctionalGroupsSequence", []):
        if "FrameVOILUTSequence" in group:
            return True
    return False
