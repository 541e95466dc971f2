"""One FHIR R4 Observation per finding of a report version (IHE IMR's imaging Observation).

- code: DCM 121071 "Finding"; value: the finding's SNOMED CT concept, or SNOMED "Normal" for a
  region the report calls normal (the SR's TID 1500 measurement group says the same).
- bodySite: the region's SNOMED structure code, its text naming the side (R4's bodySite is one
  CodeableConcept, no qualifier). The site with its laterality is a BodyStructure (location +
  locationQualifier, as the SR's Finding Site and its Laterality modifier), the Observation's
  `focus`, which also carries the SR measurement group's Tracking UID (abnormal findings): what
  HL7's DICOM SR → FHIR mapping IG does with R5's bodyStructure/focus, in R4's elements.
- interpretation: A (abnormal), AA (critical), N (normal).
- components: Certainty of Finding (DCM 111012, %) when the model gave a probability, Diameter.
- derivedFrom: the ImagingStudy by its Study Instance UID (IMR's imagingStudy slice).
- the region: R5 points derivedFrom at an ImagingSelection; R4 has none, so the image, frame and
  polyline go in one extension whose parts carry R5 ImagingSelection's element names.
The BodyStructures are contained beside the Observations (references "#site-n").
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from shared.dicom.uids import derived_uid
from shared.fhir.codes import (
    DCM,
    IMAGE_REGION_EXTENSION,
    INTERPRETATION,
    OBSERVATION_CATEGORY,
    SNOMED,
    STUDY_UID_TYPE,
    TRACKING_UID_TYPE,
    UCUM,
    coding,
    concept,
    dicom_uid_identifier,
    vocab_concept,
)
from shared.reports.domain import RegionFindingResult, StudyHeader
from shared.vocab.loader import Vocab

FINDING_CODE = concept(DCM, "121071", "Finding")
NORMAL = (SNOMED, "17621005", "Normal")
CERTAINTY = concept(DCM, "111012", "Certainty of Finding")
DIAMETER = concept(SNOMED, "81827009", "Diameter")


def tracking_uid(study_uid: str, finding: RegionFindingResult, nth: int) -> str:
    """The SR's Tracking Unique Identifier of an abnormal finding (sr_builder derives it from
    the study, region, finding and its count among same-named findings: version-independent)."""
    assert finding.finding_code is not None
    return derived_uid(
        "medrega-sr-tracking", study_uid, finding.region_code, finding.finding_code, str(nth)
    )


def study_reference(study: StudyHeader) -> dict[str, Any]:
    return {
        "type": "ImagingStudy",
        "identifier": dicom_uid_identifier(study.study_instance_uid, STUDY_UID_TYPE),
    }


def _label(finding: RegionFindingResult, language: str) -> str:
    if language == "zh":
        return f"{finding.region_name_zh}{finding.finding_name_zh or '未见明显异常'}"
    return f"{finding.region_name_en}: {finding.finding_name_en or 'normal'}"


def _image_region(finding: RegionFindingResult, study_uid: str) -> dict[str, Any] | None:
    if finding.image is None or finding.box is None:
        return None
    parts: list[dict[str, Any]] = [
        {"url": "studyUid", "valueId": study_uid},
        {"url": "instance.uid", "valueId": finding.image.sop_instance_uid},
    ]
    if finding.image.sop_class_uid:
        parts.append(
            {
                "url": "instance.sopClass",
                "valueCoding": coding(
                    "urn:ietf:rfc:3986", f"urn:oid:{finding.image.sop_class_uid}"
                ),
            }
        )
    parts.append({"url": "instance.frame", "valuePositiveInt": finding.image.frame})
    parts.append({"url": "instance.imageRegion2D.regionType", "valueCode": "polyline"})
    # Source-image pixel coordinates (column, row), the same polyline as the SR's SCOORD.
    for x, y in finding.box.polyline():
        parts.append({"url": "instance.imageRegion2D.coordinate", "valueDecimal": round(x, 3)})
        parts.append({"url": "instance.imageRegion2D.coordinate", "valueDecimal": round(y, 3)})
    return {"url": IMAGE_REGION_EXTENSION, "extension": parts}


def _quantity(code: dict[str, Any], value: float, ucum: str) -> dict[str, Any]:
    return {
        "code": code,
        "valueQuantity": {"value": value, "unit": ucum, "system": UCUM, "code": ucum},
    }


def build_site(
    finding: RegionFindingResult,
    *,
    site_id: str,
    subject: dict[str, Any],
    tracking: str | None,
    vocab: Vocab,
) -> dict[str, Any]:
    """The finding's site as a BodyStructure: structure, laterality, the SR's Tracking UID."""
    region = vocab.region(finding.region_code)
    site: dict[str, Any] = {
        "resourceType": "BodyStructure",
        "id": site_id,
        "location": vocab_concept(
            region.snomed, f"{finding.region_name_en} / {finding.region_name_zh}"
        ),
        "patient": subject,
    }
    if region.laterality is not None:
        site["locationQualifier"] = [vocab_concept(region.laterality)]
    if tracking:
        site["identifier"] = [dicom_uid_identifier(tracking, TRACKING_UID_TYPE)]
    return site


def build_observation(
    finding: RegionFindingResult,
    *,
    obs_id: str,
    site: dict[str, Any],
    status: str,
    study: StudyHeader,
    subject: dict[str, Any],
    effective: str | None,
    issued: str,
    vocab: Vocab,
) -> dict[str, Any]:
    """The finding as an Observation (a dict fhir.resources validates with the report)."""
    if finding.finding_code is not None:
        info = vocab.finding(finding.finding_code)
        value = vocab_concept(info.snomed, f"{info.en} / {info.zh}")
        flag = ("AA", "Critical abnormal") if finding.critical else ("A", "Abnormal")
    else:
        value = concept(*NORMAL, text="normal / 未见明显异常")
        flag = ("N", "Normal")
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "id": obs_id,
        "status": status,
        "category": [concept(OBSERVATION_CATEGORY, "imaging", "Imaging")],
        "code": FINDING_CODE,
        "subject": subject,
        "focus": [{"reference": f"#{site['id']}"}],
        "issued": issued,
        "valueCodeableConcept": value,
        "interpretation": [concept(INTERPRETATION, *flag)],
        "bodySite": site["location"],
        "derivedFrom": [study_reference(study)],
        "note": [{"text": f"{_label(finding, 'en')} — {_label(finding, 'zh')}"}],
    }
    if effective:
        observation["effectiveDateTime"] = effective
    components: list[dict[str, Any]] = []
    if finding.probability is not None:
        components.append(_quantity(CERTAINTY, round(finding.probability * 100.0, 1), "%"))
    if finding.size_mm is not None and finding.finding_code is not None:
        components.append(_quantity(DIAMETER, round(finding.size_mm, 1), "mm"))
    if components:
        observation["component"] = components
    region_ext = _image_region(finding, study.study_instance_uid)
    if region_ext:
        observation["extension"] = [region_ext]
    return observation


def build_observations(
    findings: list[RegionFindingResult],
    *,
    study: StudyHeader,
    subject: dict[str, Any],
    vocab: Vocab,
    **common: Any,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(Observations, their BodyStructures) for the findings a message carries (rejected ones
    are never sent)."""
    seen: Counter[tuple[str, str]] = Counter()
    observations, sites = [], []
    for index, finding in enumerate(findings, start=1):
        tracking = None
        if finding.finding_code is not None:
            key = (finding.region_code, finding.finding_code)
            seen[key] += 1
            tracking = tracking_uid(study.study_instance_uid, finding, seen[key])
        site = build_site(
            finding, site_id=f"site-{index}", subject=subject, tracking=tracking, vocab=vocab
        )
        sites.append(site)
        observations.append(
            build_observation(
                finding,
                obs_id=f"finding-{index}",
                site=site,
                study=study,
                subject=subject,
                vocab=vocab,
                **common,
            )
        )
    return observations, sites
