"""Build our report as a DICOM SR: Comprehensive 3D SR, TID 1500 root (IHE AIR style).

Content tree (root CONTAINER "Imaging Measurement Report", TID 1500):
  - Language of Content Item and Descendants (TID 1204): English, or Chinese for a zh-only SR
  - Observation context (TID 1001): the algorithm as device observer; for a signed report the
    radiologist as person observer too
  - Procedure Reported: the imaging procedure of the report's domain
  - Image Library (TID 1600): every source image (OHIF needs it)
  - Imaging Measurements, per abnormal finding:
      * with a box: a TID 1410 planar ROI group (closed 5-point POLYLINE "Image Region"
        selected from the key image) with tracking identifier + UID, Finding (its SNOMED code),
        Finding Site (+ laterality), Algorithm Identification and a Comment (DCM 121106)
        labelling it "Right pleural effusion / 右侧胸腔积液 (p 0.91)"; and, when the model gave
        a probability or a size, a TID 1501 group with the same tracking UID holding Certainty of
        Finding (%) and Diameter, each NUM INFERRED FROM the same box (TID 300 → TID 320).
        The numbers are kept out of the ROI group because OHIF (cornerstone adapters), on
        tracking, takes a group's coordinates from its first NUM and loses the finding
        otherwise; TID 1419 gives a NUM no coordinates of its own, TID 300 does.
      * without a box: a TID 1501 image-level group (source image where known) with its NUMs.
    Normal regions are said in the narrative only (a site may turn on a labelled group per
    normal region with a box: `SrContext.normal_region_groups`). A report without either gets
    one study-level "Normal" group (TID 1500 needs one).
  - Findings (DCM 121070) / Impressions (DCM 121072) containers with the narrative as TEXT
    items Finding (121071) / Impression (121073), one per language (TID 2000-shaped; TID 1500
    is extensible and viewers that only know TID 1500 skip these containers; OHIF 3.13 is one:
    it shows the content tree only of SRs whose root is not an Imaging Measurement Report).

One SR per report version; its series and SOP Instance UIDs derive from (report id, version),
so re-sending a version is idempotent at the PACS, and every date/time comes from the context,
so the same version builds to the same bytes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from copy import deepcopy

import highdicom as hd
import numpy as np
from highdicom._standard_utils import is_multiframe_image  # the rule highdicom itself applies
from highdicom.sr.value_types import ContainerContentItem, ContentSequence, TextContentItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.valuerep import DA, DT, TM

from shared.dicom.sr_content import (
    DEFAULT_SERIES_NUMBER,
    IMAGING_PROCEDURE,
    LANGUAGE_CODES,
    PROCEDURE_BY_DOMAIN,
    PROCEDURE_BY_MODALITY,
    SERIES_DESCRIPTION,
    SrContext,
    SrReport,
)
from shared.dicom.uids import derived_uid
from shared.reports.domain import Language, RegionFindingResult
from shared.reports.message_ids import sr_uids
from shared.vocab.loader import Vocab, load_vocab
from shared.vocab.phrasing import bilingual_label, finding_label

NORMAL = hd.sr.CodedConcept.from_code(codes.SCT.Normal)
CERTAINTY_OF_FINDING = hd.sr.CodedConcept.from_code(codes.DCM.CertaintyOfFinding)
PERCENT = hd.sr.CodedConcept.from_code(codes.UCUM.Percent)
DIAMETER = hd.sr.CodedConcept.from_code(codes.SCT.Diameter)
MILLIMETER = hd.sr.CodedConcept.from_code(codes.UCUM.Millimeter)
COMMENT = hd.sr.CodedConcept.from_code(codes.DCM.Comment)

# Text VRs whose values decide whether the SR needs Specific Character Set ISO_IR 192.
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})

Group = (
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)


def build_report_sr(
    report: SrReport, context: SrContext, vocab: Vocab | None = None
) -> hd.sr.Comprehensive3DSR:
    """The report as a Comprehensive 3D SR dataset, ready for `save_as` or C-STORE."""
    vocab = vocab or load_vocab()
    uids = sr_uids(context.report_id, context.version)
    if (
        context.predecessor is not None
        and context.predecessor.sop_instance_uid == uids.sop_instance_uid
    ):
        raise ValueError(
            "PredecessorDocumentsSequence would reference this SR itself "
            f"({uids.sop_instance_uid}); a new status needs a new report version"
        )
    images = _unique_images(context.source_images)
    groups = _measurement_groups(report, context, vocab)
    measurement_report = hd.sr.MeasurementReport(
        observation_context=_observation_context(context),
        procedure_reported=_procedure_reported(report.domain, images[0]),
        imaging_measurements=groups,
        language_of_content_item_and_descendants=hd.sr.LanguageOfContentItemAndDescendants(
            LANGUAGE_CODES[context.primary_language]
        ),
        referenced_images=[_library_view(image) for image in images],
    )
    measurement_report[0].ContentSequence.extend(_narrative(report, context))

    is_signed = context.status != "draft"
    observer = context.verifying_observer
    software_versions = [context.model_version]
    if context.software_version:
        software_versions.append(context.software_version)
    content_dt = context.content_datetime
    sr = hd.sr.Comprehensive3DSR(
        evidence=[_evidence_view(image) for image in images],
        content=measurement_report,
        series_instance_uid=uids.series_instance_uid,
        series_number=context.series_number or DEFAULT_SERIES_NUMBER[context.status],
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=context.version,
        manufacturer=context.manufacturer,
        # A draft is the algorithm's complete output but not yet the complete report: the
        # radiologist may add to it. A signed report is complete.
        is_complete=is_signed,
        is_final=is_signed,
        is_verified=is_signed,
        institution_name=context.institution_name,
        verifying_observer_name=observer.name if observer else None,
        verifying_organization=observer.organization if observer else None,
        previous_versions=[context.predecessor.as_dataset()] if context.predecessor else None,
        requested_procedures=_referenced_requests(images[0]),
        contributing_equipment=[
            hd.ContributingEquipment(
                manufacturer=context.manufacturer,
                purpose_of_reference=codes.DCM.ProcessingEquipment,
                manufacturer_model_name=context.model_name,
                software_versions=software_versions,
                device_serial_number=context.device_serial_number,
                contribution_datetime=content_dt,
                contribution_description="AI-drafted region-grounded report",
            )
        ],
        # Decided below from the actual content; never inherited from the source image (a
        # GB18030 or Latin-1 source must not decide how our UTF-8 narrative is encoded).
        specific_character_set=None,
        series_description=SERIES_DESCRIPTION[context.status],
        manufacturer_model_name=context.model_name,
        software_versions=software_versions,
        device_serial_number=context.device_serial_number,
        content_date=DA(content_dt.date()),
        content_time=TM(content_dt.time()),
    )
    _pin_datetimes(sr, context)
    if needs_utf8(sr):
        sr.SpecificCharacterSet = "ISO_IR 192"
    return sr


def _unique_images(images: Sequence[Dataset]) -> list[Dataset]:
    seen: dict[str, Dataset] = {}
    for image in images:
        seen.setdefault(str(image.SOPInstanceUID), image)
    return list(seen.values())


def _referenced_requests(image: Dataset) -> list[Dataset] | None:
    """Referenced Request Sequence: the order the report answers, so a PACS or RIS can match
    the SR to it by Accession Number (Type 1C: only when the request is known)."""
    accession = str(image.get("AccessionNumber") or "")
    if not accession:
        return None
    request = (image.get("RequestAttributesSequence") or [Dataset()])[0]
    item = Dataset()
    item.StudyInstanceUID = image.StudyInstanceUID
    item.ReferencedStudySequence = []
    item.AccessionNumber = accession
    item.PlacerOrderNumberImagingServiceRequest = ""
    item.FillerOrderNumberImagingServiceRequest = ""
    item.RequestedProcedureID = request.get("RequestedProcedureID") or ""
    item.RequestedProcedureDescription = request.get("RequestedProcedureDescription") or ""
    item.RequestedProcedureCodeSequence = []
    return [item]


def _procedure_reported(domain: str, first_image: Dataset) -> hd.sr.CodedConcept:
    if domain in PROCEDURE_BY_DOMAIN:
        return PROCEDURE_BY_DOMAIN[domain]
    return PROCEDURE_BY_MODALITY.get(str(first_image.Modality), IMAGING_PROCEDURE)


def _observation_context(context: SrContext) -> hd.sr.ObservationContext:
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid(
                "medrega-device", context.manufacturer, context.model_name, context.model_version
            ),
            name=context.model_name,
            manufacturer_name=context.manufacturer,
            model_name=context.model_name,
            serial_number=context.device_serial_number,
        ),
    )
    person = None
    if context.verifying_observer is not None:
        person = hd.sr.ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                name=context.verifying_observer.name,
                organization_name=context.verifying_observer.organization,
            ),
        )
    return hd.sr.ObservationContext(observer_person_context=person, observer_device_context=device)


def _algorithm(context: SrContext) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=context.model_name,
        version=context.model_version,
        family=codes.DCM.ArtificialIntelligence,
    )


def _measurement_groups(report: SrReport, context: SrContext, vocab: Vocab) -> list[Group]:
    groups: list[Group] = []
    # Tracking UIDs depend on the study and the finding, not on the report version, so a
    # viewer can follow the same finding from the draft to the signed report.
    seen: Counter[tuple[str, str]] = Counter()
    for index, finding in enumerate(report.findings):
        abnormal = finding.finding_code is not None
        if not abnormal and (finding.box is None or not context.normal_region_groups):
            continue  # then the normal region lives in the narrative only
        key = (finding.region_code, finding.finding_code or "normal")
        seen[key] += 1
        tracking = hd.sr.TrackingIdentifier(
            uid=derived_uid(
                "medrega-sr-tracking", context.study_instance_uid, *key, str(seen[key])
            ),
            identifier=_tracking_label(index, finding, context.primary_language, vocab),
        )
        finding_type = (
            hd.sr.CodedConcept(*_snomed(vocab.finding(finding.finding_code)))
            if finding.finding_code is not None
            else NORMAL
        )
        region = vocab.region(finding.region_code)
        site = hd.sr.FindingSite(
            anatomic_location=hd.sr.CodedConcept(*_snomed(region)),
            laterality=(
                hd.sr.CodedConcept(
                    region.laterality.code, region.laterality.scheme, region.laterality.meaning
                )
                if region.laterality
                else None
            ),
        )
        measurements = _measurements(finding, None) if abnormal else []
        source = context.source_image(finding.image.sop_instance_uid) if finding.image else None
        if finding.image is not None:
            if source is None:
                raise ValueError(
                    f"findings[{index}] ({finding.region_code}) points at SOP Instance UID "
                    f"{finding.image.sop_instance_uid}, which is not among the source images"
                )
            if str(source.SOPClassUID) != finding.image.sop_class_uid:
                raise ValueError(
                    f"findings[{index}]: ReferencedSOPClassUID {finding.image.sop_class_uid} "
                    f"differs from the image's SOPClassUID {source.SOPClassUID}"
                )
        frames = _frame_numbers(index, finding, source) if source is not None else None
        label = bilingual_label(
            finding.finding_code,
            finding.region_code,
            context.languages,
            finding.probability if abnormal else None,
            vocab,
        )
        if finding.box is not None and source is not None:
            _check_box_inside(index, finding, source)
            polyline = np.array(finding.box.polyline(), dtype=np.float64)
            # The box and what it shows (TID 1410), without measurements: a viewer that
            # tracks the group (OHIF) takes its coordinates from the group's first NUM when it
            # has one, and TID 1419 gives a NUM no coordinates of its own.
            roi_group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_region=hd.sr.ImageRegion(
                    graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                    graphic_data=polyline,
                    source_image=hd.sr.SourceImageForRegion.from_source_image(source, frames),
                ),
                finding_type=finding_type,
                algorithm_id=_algorithm(context),
                finding_sites=[site],
            )
            _add_label(roi_group, label)
            groups.append(roi_group)
            if measurements:
                # The numbers (TID 1501, same Tracking UID: the same finding), each inferred
                # from the box on its image (TID 300 → TID 320).
                groups.append(
                    hd.sr.MeasurementsAndQualitativeEvaluations(
                        tracking_identifier=tracking,
                        finding_type=finding_type,
                        algorithm_id=_algorithm(context),
                        finding_sites=[site],
                        measurements=_measurements(
                            finding,
                            hd.sr.CoordinatesForMeasurement(
                                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                graphic_data=polyline,
                                source_image=hd.sr.SourceImageForRegion.from_source_image(
                                    source, frames
                                ),
                            ),
                        ),
                    )
                )
        else:
            group = hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                finding_type=finding_type,
                algorithm_id=_algorithm(context),
                finding_sites=[site],
                measurements=measurements or None,
                source_images=(
                    [hd.sr.SourceImageForMeasurementGroup.from_source_image(source, frames)]
                    if source is not None
                    else None
                ),
            )
            _add_label(group, label)
            groups.append(group)
    if not groups:
        # TID 1500 needs at least one measurement group; a report with neither abnormal
        # findings nor boxed normal regions is a normal study, said once at study level.
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=derived_uid("medrega-sr-tracking", context.study_instance_uid, "study"),
                    identifier="study" if context.primary_language == "en" else "检查",
                ),
                finding_type=NORMAL,
                algorithm_id=_algorithm(context),
            )
        )
    return groups


def _snomed(item: object) -> tuple[str, str, str]:
    concept = item.snomed  # type: ignore[attr-defined]
    return concept.code, concept.scheme, concept.meaning


def _tracking_label(
    index: int, finding: RegionFindingResult, language: Language, vocab: Vocab
) -> str:
    """ "1: Right pleural effusion": the finding's place in the report and its name."""
    name = finding_label(finding.finding_code, finding.region_code, language, vocab)
    return f"{index + 1}: {name}"


def _measurements(
    finding: RegionFindingResult, inferred_from: hd.sr.CoordinatesForMeasurement | None
) -> list[hd.sr.Measurement]:
    coordinates = [inferred_from] if inferred_from is not None else None
    measurements = []
    if finding.probability is not None:
        measurements.append(
            hd.sr.Measurement(
                name=CERTAINTY_OF_FINDING,
                value=round(finding.probability * 100.0, 1),
                unit=PERCENT,
                referenced_coordinates=coordinates,
            )
        )
    if finding.size_mm is not None:
        if finding.size_mm <= 0:
            raise ValueError(
                f"{finding.region_code}: size_mm must be positive, got {finding.size_mm}"
            )
        measurements.append(
            hd.sr.Measurement(
                name=DIAMETER,
                value=round(finding.size_mm, 1),
                unit=MILLIMETER,
                referenced_coordinates=coordinates,
            )
        )
    return measurements


def _add_label(group: Group, label: str) -> None:
    """The finding's name, side and certainty as a Comment (DCM 121106): TID 1410/1501 are
    extensible, and OHIF labels a tracked measurement with its group's Comment (otherwise
    only the Finding Site's meaning, "Lung", shows)."""
    group[0].ContentSequence.append(
        TextContentItem(
            name=COMMENT, value=label, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
    )


def _frame_numbers(index: int, finding: RegionFindingResult, image: Dataset) -> list[int] | None:
    assert finding.image is not None
    frame = finding.image.frame
    frames_in_image = int(image.get("NumberOfFrames") or 1)
    if not 1 <= frame <= frames_in_image:
        raise ValueError(
            f"findings[{index}]: ReferencedFrameNumber {frame} outside 1..{frames_in_image} "
            f"(NumberOfFrames of {image.SOPInstanceUID})"
        )
    # Images of a single-frame IOD are referenced without a frame number (highdicom refuses
    # one); a multi-frame IOD always names the frame, even when it holds a single frame.
    return [frame] if is_multiframe_image(image) else None


def _check_box_inside(index: int, finding: RegionFindingResult, image: Dataset) -> None:
    box = finding.box
    assert box is not None
    # SCOORD pixel coordinates run from 0 (outer edge of the first pixel) to Columns / Rows.
    if box.x1 < 0 or box.y1 < 0 or box.x2 > image.Columns or box.y2 > image.Rows:
        raise ValueError(
            f"findings[{index}] ({finding.region_code}): GraphicData box "
            f"({box.x1}, {box.y1}, {box.x2}, {box.y2}) outside the image's "
            f"Columns x Rows {image.Columns} x {image.Rows}"
        )


def _narrative(report: SrReport, context: SrContext) -> list[ContainerContentItem]:
    sections = (
        (codes.DCM.Findings, codes.DCM.Finding, report.findings_text),
        (codes.DCM.Impressions, codes.DCM.Impression, report.impression_text),
    )
    for lang in context.languages:
        if not any(texts.get(lang, "").strip() for _, _, texts in sections):
            raise ValueError(
                f"the SR is configured for language {context.language!r} but the report has "
                f"no findings or impression text in {lang!r}"
            )
    containers = []
    for section_name, item_name, texts in sections:
        items = []
        for lang in context.languages:
            text = texts.get(lang, "").strip()
            if not text:
                continue
            item = TextContentItem(
                name=item_name, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
            if lang != context.primary_language:
                item.ContentSequence = hd.sr.LanguageOfContentItemAndDescendants(
                    LANGUAGE_CODES[lang]
                )
            items.append(item)
        if items:
            container = ContainerContentItem(
                name=section_name, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
            container.ContentSequence = ContentSequence(items)
            containers.append(container)
    return containers


_PROJECTION_DESCRIPTORS = ("PatientOrientation", "ImagerPixelSpacing")
_CROSS_SECTIONAL_DESCRIPTORS = (
    "PixelSpacing",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "SliceThickness",
)


def _library_view(image: Dataset) -> Dataset:
    """The header as highdicom's Image Library should see it.

    highdicom adds modality descriptors (TID 1603/1604) from attributes that real images do not
    always carry at the top level (a CR without Imager Pixel Spacing, an enhanced multi-frame
    CT). The descriptors are optional in TID 1602, so such an image is listed without them
    rather than failing the whole report.
    """
    modality = str(image.Modality)
    needed: tuple[str, ...] = ()
    if modality in ("CT", "MR", "PT"):
        needed = _CROSS_SECTIONAL_DESCRIPTORS
    elif modality in ("CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA"):
        needed = _PROJECTION_DESCRIPTORS
    if all(image.get(k) not in (None, "") for k in needed):
        return image
    view = deepcopy(image)
    view.Modality = "OT"  # only in this view: makes highdicom skip the modality descriptors
    return view


# Patient and study attributes highdicom copies from the first image; Type 2 in the source IODs,
# so they may be absent. An empty value is what the SR should carry then.
_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def _evidence_view(image: Dataset) -> Dataset:
    missing = [k for k in _TYPE2_PATIENT_STUDY if k not in image]
    if not missing:
        return image
    view = deepcopy(image)
    for keyword in missing:
        setattr(view, keyword, None)
    return view


def _pin_datetimes(sr: Dataset, context: SrContext) -> None:
    """Replace highdicom's 'now' stamps with the report's own times (same version, same bytes)."""
    created = context.content_datetime
    sr.InstanceCreationDate = DA(created.date())
    sr.InstanceCreationTime = TM(created.time())
    for equipment in sr.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in equipment:
            equipment.ContributionDateTime = DT(created)
    if context.verifying_observer is not None:
        for observer in sr.VerifyingObserverSequence:
            observer.VerificationDateTime = DT(context.verifying_observer.verified_at)


def needs_utf8(sr: Dataset) -> bool:
    for element in sr.iterall():
        if element.VR not in _TEXT_VRS or element.value is None:
            continue
        values = element.value if element.VM > 1 else [element.value]
        if any(not str(v).isascii() for v in values):
            return True
    return False
