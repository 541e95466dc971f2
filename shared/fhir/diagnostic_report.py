"""A report version as a FHIR R4 DiagnosticReport, after IHE Interactive Multimedia Report (IMR).

Built from the report domain objects (`ReportVersion`), never from database rows, and validated
by `fhir.resources` (its R4B models: DiagnosticReport, Observation and the data types used here
are the same in R4 4.0.1 and R4B 4.3.0).

One resource per study: its logical id and its business identifier are the Study Instance UID
(a valid FHIR id), so every version of the report updates the same resource —
status preliminary (draft) → final (signed) → corrected (signed again), as OBR-25 P/F/C.
The findings are contained Observations (observations.py) so that one PUT carries the whole
report; the study is referenced by its Study Instance UID, the order by its accession number.
Narrative: both languages in text.div and one HTML presentedForm per language; the impression
is `conclusion` (first language) with the other as a translation extension.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from shared.config import get_settings
from shared.dicom.sr_content import languages_of
from shared.fhir.codes import (
    FHIR_STATUS,
    LANGUAGE_TAG,
    LOINC,
    REPORT_IDENTIFIER_SYSTEM,
    REPORT_VERSION_TAG,
    SNOMED,
    TRANSLATION_EXTENSION,
    V2_0074,
    V2_0203,
    concept,
    vocab_concept,
)
from shared.fhir.narrative import narrative_div, presented_form
from shared.fhir.observations import build_observations, study_reference
from shared.reports.domain import Language, ReportVersion, StudyHeader
from shared.vocab import bilingual_label
from shared.vocab.loader import Vocab, load_vocab

# LOINC 18748-4 "Diagnostic imaging study": the report document's code (IMR, US Core).
REPORT_CODE = concept(LOINC, "18748-4", "Diagnostic imaging study")
RADIOLOGY = concept(LOINC, "LP29684-5", "Radiology")
RADIOLOGY_SECTION = concept(V2_0074, "RAD", "Radiology")
ACCESSION_TYPE = concept(V2_0203, "ACSN", "Accession ID")
MRN_TYPE = concept(V2_0203, "MR", "Medical record number")


class FhirBuildError(ValueError):
    """The version cannot become a valid DiagnosticReport (say why)."""


def report_identifier(study_instance_uid: str) -> dict[str, str]:
    """The report's business identifier (same for every version of one study's report)."""
    return {"system": REPORT_IDENTIFIER_SYSTEM, "value": study_instance_uid}


def _instant(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # the database stores UTC
    return moment.isoformat(timespec="seconds")


def _effective(study: StudyHeader) -> str | None:
    """Study date as a FHIR date (a time would need a zone, which DICOM does not give)."""
    date = (study.study_date or "").strip()
    if len(date) == 8 and date.isdigit():
        return f"{date[:4]}-{date[4:6]}-{date[6:]}"
    return None


def _subject(study: StudyHeader) -> dict[str, Any]:
    subject: dict[str, Any] = {"type": "Patient"}
    if study.patient_id:
        subject["identifier"] = {"type": MRN_TYPE, "value": study.patient_id}
    if study.patient_name:
        # DICOM PN: "Family^Given=表意^名" → "Family Given (表意 名)"
        groups = [" ".join(p for p in g.split("^") if p) for g in study.patient_name.split("=")]
        groups = [g for g in groups if g]
        if groups:
            subject["display"] = groups[0] + (f" ({' / '.join(groups[1:])})" if groups[1:] else "")
    if len(subject) == 1:
        subject["display"] = "unknown patient"  # a Reference needs something to say
    return subject


def _conclusion(version: ReportVersion, languages: tuple[Language, ...]) -> dict[str, Any]:
    texts = {lang: version.section_text("impression", lang) for lang in languages}
    first, *others = [lang for lang in languages if texts[lang]] or [languages[0]]
    if not texts[first]:
        return {}
    out: dict[str, Any] = {"conclusion": texts[first]}
    translations = [
        {
            "url": TRANSLATION_EXTENSION,
            "extension": [
                {"url": "lang", "valueCode": LANGUAGE_TAG[lang]},
                {"url": "content", "valueString": texts[lang]},
            ],
        }
        for lang in others
    ]
    if translations:
        out["_conclusion"] = {"extension": translations}
    return out


def _conclusion_codes(
    version: ReportVersion, vocab: Vocab, languages: tuple[Language, ...]
) -> list[dict[str, Any]]:
    codes: list[dict[str, Any]] = []
    for finding in version.sent_findings:
        if finding.finding_code is None:
            continue
        info = vocab.finding(finding.finding_code)
        # The SR's, GSPS's and review page's wording: "Right pleural effusion / 右侧胸腔积液".
        label = bilingual_label(finding.finding_code, finding.region_code, languages, vocab=vocab)
        item = vocab_concept(info.snomed, label)
        if item not in codes:
            codes.append(item)
    return codes


def diagnostic_report_json(
    version: ReportVersion,
    *,
    languages: tuple[Language, ...] = ("en", "zh"),
    institution: str,
    vocab: Vocab | None = None,
) -> dict[str, Any]:
    """The version as DiagnosticReport JSON, validated by fhir.resources."""
    if not languages:
        raise FhirBuildError("at least one report language is needed")
    vocab = vocab or load_vocab()
    study = version.study
    status = FHIR_STATUS[version.result_status]
    if version.is_final and version.signer is None:
        raise FhirBuildError("a signed report needs its signer and signing time")
    issued = _instant(version.signer.signed_at if version.signer else version.created_at)
    effective = _effective(study)
    subject = _subject(study)
    observations, sites = build_observations(
        version.sent_findings,
        study=study,
        status=status,
        subject=subject,
        effective=effective,
        issued=issued,
        vocab=vocab,
    )
    identifiers: list[dict[str, Any]] = [report_identifier(study.study_instance_uid)]
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": study.study_instance_uid,
        "meta": {"tag": [{"system": REPORT_VERSION_TAG, "code": str(version.version)}]},
        "language": LANGUAGE_TAG[languages[0]],
        "text": {"status": "generated", "div": narrative_div(version, languages, status)},
        "contained": observations + sites,
        "identifier": identifiers,
        "status": status,
        "category": [RADIOLOGY, RADIOLOGY_SECTION],
        "code": REPORT_CODE,
        "subject": subject,
        "issued": issued,
        "performer": [{"type": "Organization", "display": institution}],
        "imagingStudy": [study_reference(study)],
        "result": [{"reference": f"#{o['id']}"} for o in observations],
        "presentedForm": [presented_form(version, lang, status, issued) for lang in languages],
    }
    if study.accession_number:
        accession = {"type": ACCESSION_TYPE, "value": study.accession_number}
        identifiers.append(accession)
        report["basedOn"] = [{"type": "ServiceRequest", "identifier": accession}]
    if effective:
        report["effectiveDateTime"] = effective
    if version.signer is not None:
        report["resultsInterpreter"] = [
            {"type": "Practitioner", "display": version.signer.name_pn.replace("^", " ").strip()}
        ]
    report.update(_conclusion(version, languages))
    codes = _conclusion_codes(version, vocab, languages)
    if codes:
        report["conclusionCode"] = codes
    elif version.sent_findings:
        report["conclusionCode"] = [concept(SNOMED, "17621005", "Normal")]
    return validated(report)


def validated(report: dict[str, Any]) -> dict[str, Any]:
    """The JSON as fhir.resources reads and writes it back (raises FhirBuildError if invalid)."""
    try:
        model = DiagnosticReport.model_validate(report)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise FhirBuildError(f"not a valid R4 DiagnosticReport: {exc}") from exc
    if model.status not in FHIR_STATUS.values():
        raise FhirBuildError(f"status {model.status!r} is not one this system sends")
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def configured_report_json(version: ReportVersion) -> dict[str, Any]:
    """The DiagnosticReport in the configured report languages, for this institution."""
    settings = get_settings()
    return diagnostic_report_json(
        version,
        languages=languages_of(settings.report_languages),
        institution=settings.institution_name,
    )
