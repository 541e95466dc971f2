"""The findings' key images for any PACS: a Key Object Selection document (PS3.3 A.35.4, TID 2010).

Title: DCM 113000 "Of Interest" (CID 7010). Of the CID 7010 titles it is the one PACS and
viewers treat as plain "key images" (IHE Key Image Note's default); the others say why an
image was selected for a workflow we are not part of (For Surgery, For Teaching, Rejected for
Quality Reasons, …). Whose selection it is is said where TID 2010 puts it: the AI as device
observer (and the signing radiologist as person observer once signed), and the Key Object
Description (DCM 113012) starting "AI draft, not verified" or "Signed by radiologist …" and
naming each finding in the configured languages.

Each key image item points at the image's frame when the image is multi-frame, and at the
image's Grayscale Softcopy Presentation State when we send one (Image Reference Macro,
PS3.3 Table 10-3), so a viewer that opens the key image from the KOS shows the boxes too.
UIDs come from (report id, version) (shared/reports/message_ids.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import highdicom as hd
from highdicom._standard_utils import is_multiframe_image
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from shared.dicom.presentation_common import (
    MANUFACTURER,
    content_moment,
    document_status,
    finding_label,
    finish,
    images_by_uid,
    key_findings,
    source_image,
)
from shared.dicom.uids import derived_uid
from shared.reports.domain import Language, RegionFindingResult, ReportVersion
from shared.reports.key_images import key_image_uids
from shared.reports.message_ids import kos_uids

TITLE = codes.DCM.OfInterest  # DCM 113000, CID 7010
SERIES_NUMBER = {"P": 9921, "F": 9922, "C": 9923}
SERIES_DESCRIPTION = {
    "P": "AI draft key images",
    "F": "Signed report key images",
    "C": "Corrected report key images",
}
_MAX_DESCRIPTION = 1024  # UT allows far more; a PACS shows the first lines


def has_key_images(version: ReportVersion) -> bool:
    return bool(key_findings(version))


def build_key_object_selection(
    version: ReportVersion,
    images: Iterable[Dataset],
    *,
    presentation_states: Sequence[Dataset] = (),
    languages: tuple[Language, ...] = ("en", "zh"),
    institution_name: str | None = None,
) -> hd.ko.KeyObjectSelectionDocument:
    """The KOS of `version`'s key images (headers suffice). `presentation_states`: the GSPS sent
    with it (one per key image at most); each key image item then references its own."""
    by_uid = images_by_uid(images)
    findings = key_findings(version)
    if not findings:
        raise ValueError(
            f"report {version.report_id} version {version.version} has no abnormal finding on "
            "an image: there is no key image to select"
        )
    for finding in findings:
        source_image(by_uid, finding)  # every finding's image must be known
    ordered = [by_uid[uid] for uid in key_image_uids(findings)]
    status = document_status(version)
    description = "\n".join(
        [status.summary + "."] + [f"- {finding_label(f, languages)}" for f in findings]
    )
    uids = kos_uids(version.report_id, version.version)
    content = hd.ko.KeyObjectSelection(
        document_title=TITLE,
        referenced_objects=ordered,
        observer_device_context=_device(version),
        observer_person_context=_person(version),
        description=description[:_MAX_DESCRIPTION],
    )
    document = hd.ko.KeyObjectSelectionDocument(
        evidence=[*ordered, *presentation_states],
        content=content,
        series_instance_uid=uids.series_instance_uid,
        series_number=SERIES_NUMBER[version.result_status],
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        institution_name=institution_name,
        series_description=SERIES_DESCRIPTION[version.result_status],
    )
    _refine_image_items(document, findings, ordered, presentation_states)
    finish(document, content_moment(version))
    return document


def _device(version: ReportVersion) -> hd.sr.ObserverContext:
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            # the SR names the same device observer with the same derivation
            uid=derived_uid(
                "medrega-device", MANUFACTURER, version.model_name, version.model_version
            ),
            name=version.model_name,
            manufacturer_name=MANUFACTURER,
            model_name=version.model_name,
        ),
    )


def _person(version: ReportVersion) -> hd.sr.ObserverContext | None:
    if version.signer is None or not version.is_final:
        return None
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=version.signer.name_pn
        ),
    )


def _refine_image_items(
    document: Dataset,
    findings: Sequence[RegionFindingResult],
    images: Sequence[Dataset],
    presentation_states: Sequence[Dataset],
) -> None:
    """Add the frames (multi-frame images) and the presentation state to each IMAGE item."""
    multiframe = {str(i.SOPInstanceUID) for i in images if is_multiframe_image(i)}
    frames: dict[str, set[int]] = {}
    for finding in findings:
        assert finding.image is not None
        frames.setdefault(finding.image.sop_instance_uid, set()).add(finding.image.frame)
    state_of: dict[str, Dataset] = {}
    for state in presentation_states:
        for series in state.ReferencedSeriesSequence:
            for image in series.ReferencedImageSequence:
                state_of[str(image.ReferencedSOPInstanceUID)] = state
    for item in document.ContentSequence:
        if item.ValueType != "IMAGE":
            continue
        reference = item.ReferencedSOPSequence[0]
        uid = str(reference.ReferencedSOPInstanceUID)
        if uid in multiframe:
            reference.ReferencedFrameNumber = sorted(frames[uid])
        applied = state_of.get(uid)
        if applied is not None:
            pointer = Dataset()
            pointer.ReferencedSOPClassUID = applied.SOPClassUID
            pointer.ReferencedSOPInstanceUID = applied.SOPInstanceUID
            reference.ReferencedSOPSequence = [pointer]
