"""Code systems, identifier systems and extension URLs the FHIR output uses, in one place."""

from __future__ import annotations

from typing import Any

from shared.reports.domain import ResultStatus
from shared.vocab.loader import CodedConcept as VocabCode

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"  # identifier types (ACSN, MR)
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"  # diagnostic service section
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
# A DICOM UID as a FHIR identifier (ImagingStudy.identifier convention): urn:oid:<uid>.
DICOM_UID_SYSTEM = "urn:dicom:uid"
# The standard extension for a string's other languages (R4 core extension registry).
TRANSLATION_EXTENSION = "http://hl7.org/fhir/StructureDefinition/translation"
# Our own names live under a `.invalid` (RFC 2606) base: they can never resolve to someone
# else's page, and a site that publishes definitions can tell ours apart.
OWN_BASE = "https://medrega-pacs.invalid/fhir"
# The finding's region, with the element names of R5 ImagingSelection (instance.uid, frame,
# imageRegion2D.regionType/coordinate): R4 has no ImagingSelection.
IMAGE_REGION_EXTENSION = f"{OWN_BASE}/StructureDefinition/image-region-2d"
# The report's business identifier: one per study (value: its Study Instance UID), the same for
# every version, so a receiver's conditional update finds the earlier version.
REPORT_IDENTIFIER_SYSTEM = f"{OWN_BASE}/sid/report-of-study"
# meta.tag: which report version (our numbering) a DiagnosticReport shows.
REPORT_VERSION_TAG = f"{OWN_BASE}/CodeSystem/report-version"

# HL7 table 0123 (OBR-25) → DiagnosticReport.status / Observation.status, as HL7's v2-to-FHIR
# mapping has it: C (a correction of a final result) is "corrected", a kind of "amended".
FHIR_STATUS: dict[ResultStatus, str] = {"P": "preliminary", "F": "final", "C": "corrected"}

# RFC 5646 tags of the report languages (the SR says en-US / zh-CN likewise).
LANGUAGE_TAG = {"en": "en-US", "zh": "zh-CN"}


def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def concept(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [coding(system, code, display)]}
    if text:
        out["text"] = text
    return out


# Identifier types as HL7's DICOM SR → FHIR mapping IG types them: DICOM concept codes.
STUDY_UID_TYPE = ("110180", "Study Instance UID")
TRACKING_UID_TYPE = ("112040", "Tracking Unique Identifier")


def dicom_uid_identifier(uid: str, kind: tuple[str, str]) -> dict[str, Any]:
    """A DICOM UID as an identifier of type `kind` (a DCM code and its meaning)."""
    return {
        "type": concept(DCM, *kind),
        "system": DICOM_UID_SYSTEM,
        "value": f"urn:oid:{uid}",
    }


def vocab_concept(coded: VocabCode, text: str | None = None) -> dict[str, Any]:
    """A vocabulary code (DICOM scheme designator, code, meaning) as a CodeableConcept."""
    return concept(scheme_system(coded.scheme), coded.code, coded.meaning, text)


def scheme_system(scheme: str) -> str:
    """A DICOM coding scheme designator (as in the vocabulary) → FHIR code system URL."""
    systems = {"SCT": SNOMED, "LN": LOINC, "DCM": DCM, "UCUM": UCUM}
    if scheme not in systems:
        raise ValueError(f"no FHIR code system known for coding scheme {scheme!r}")
    return systems[scheme]
