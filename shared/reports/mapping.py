"""The one mapping between database rows and report domain objects.

Region-finding columns and the sentence JSON layout are written out here and nowhere else:
the worker stores a `DraftResult` through `finding_row`/`sentences_json`, the web, the SR and the
ORU read versions through `report_version`.
"""

from __future__ import annotations

from typing import Any, cast

from shared.db.models import RegionFinding, Report, Study, User
from shared.reports.domain import (
    ImageRef,
    PixelBox,
    RegionFindingResult,
    ReportSentence,
    ReportState,
    ReportVersion,
    Review,
    Signer,
    StudyHeader,
)


def finding_row(report_id: int, ordinal: int, finding: RegionFindingResult) -> RegionFinding:
    box, image = finding.box, finding.image
    return RegionFinding(
        report_id=report_id,
        ordinal=ordinal,
        region_code=finding.region_code,
        region_name_en=finding.region_name_en,
        region_name_zh=finding.region_name_zh,
        finding_code=finding.finding_code,
        finding_name_en=finding.finding_name_en,
        finding_name_zh=finding.finding_name_zh,
        probability=finding.probability,
        critical=finding.critical,
        size_mm=finding.size_mm,
        sop_instance_uid=image.sop_instance_uid if image else None,
        frame_number=image.frame if image else None,
        x1=box.x1 if box else None,
        y1=box.y1 if box else None,
        x2=box.x2 if box else None,
        y2=box.y2 if box else None,
        box_flag=finding.box_flag,
        sentence_en=finding.sentence_en,
        sentence_zh=finding.sentence_zh,
        review=finding.review,
    )


def finding_from_row(row: RegionFinding, sop_class_uid: str = "") -> RegionFindingResult:
    """`sop_class_uid` is not stored on the finding; the SR builder fills it from the header."""
    box = None
    if row.x1 is not None and row.y1 is not None and row.x2 is not None and row.y2 is not None:
        box = PixelBox(row.x1, row.y1, row.x2, row.y2)
    image = (
        ImageRef(row.sop_instance_uid, sop_class_uid, row.frame_number or 1)
        if row.sop_instance_uid
        else None
    )
    return RegionFindingResult(
        region_code=row.region_code,
        region_name_en=row.region_name_en,
        region_name_zh=row.region_name_zh,
        finding_code=row.finding_code,
        finding_name_en=row.finding_name_en,
        finding_name_zh=row.finding_name_zh,
        probability=row.probability,
        image=image,
        box=box,
        sentence_en=row.sentence_en,
        sentence_zh=row.sentence_zh,
        size_mm=row.size_mm,
        critical=row.critical,
        box_flag=row.box_flag,
        review=cast(Review, row.review),
    )


def sentences_json(sentences: list[ReportSentence]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for s in sentences:
        item: dict[str, Any] = {
            "section": s.section,
            "en": s.en,
            "zh": s.zh,
            "finding_ordinals": list(s.finding_ordinals),
        }
        if s.stale:
            item["stale"] = s.stale
        out.append(item)
    return out


def sentences_from_report(report: Report) -> list[ReportSentence]:
    """The version's sentences; rows that hold only the section texts give one per section."""
    sentences = [
        ReportSentence(
            section="impression" if raw.get("section") == "impression" else "findings",
            en=str(raw.get("en") or ""),
            zh=str(raw.get("zh") or ""),
            finding_ordinals=[int(o) for o in raw.get("finding_ordinals") or []],
            stale=raw.get("stale") if raw.get("stale") in ("en", "zh") else None,
        )
        for raw in report.sentences or []
    ]
    if sentences:
        return sentences
    for section in ("findings", "impression"):
        en, zh = getattr(report, f"{section}_en") or "", getattr(report, f"{section}_zh") or ""
        if en or zh:
            sentences.append(ReportSentence(section=section, en=en, zh=zh))
    return sentences


def study_header(study: Study) -> StudyHeader:
    return StudyHeader(
        study_instance_uid=study.study_instance_uid,
        patient_id=study.patient_id,
        patient_name=study.patient_name,
        patient_birth_date=study.patient_birth_date,
        patient_sex=study.patient_sex,
        accession_number=study.accession_number,
        study_date=study.study_date,
        study_time=study.study_time,
        procedure_code_value=study.procedure_code_value,
        procedure_code_scheme=study.procedure_code_scheme,
        procedure_code_meaning=study.procedure_code_meaning,
    )


def signer_of(report: Report, user: User | None) -> Signer | None:
    if user is None or report.signed_at is None:
        return None
    return Signer(
        username=user.username,
        name_pn=user.dicom_person_name or user.full_name,
        signed_at=report.signed_at,
    )


def report_version(study: Study, report: Report, signer: User | None = None) -> ReportVersion:
    """`report.findings` must be loaded (ordered by ordinal); `signer` is the user whose id is
    `report.signed_by_user_id` (required for signed and corrected versions)."""
    findings = sorted(report.findings, key=lambda f: f.ordinal)
    if [f.ordinal for f in findings] != list(range(len(findings))):
        raise ValueError(f"report {report.id}: finding ordinals are not 0..n-1")
    return ReportVersion(
        report_id=report.id,
        version=report.version,
        status=cast(ReportState, report.status),
        study=study_header(study),
        domain=report.domain or "unknown",
        model_name=report.model_name or "unknown",
        model_version=report.model_version or "unknown",
        created_at=report.created_at,
        findings=[finding_from_row(f) for f in findings],
        sentences=sentences_from_report(report),
        signer=signer_of(report, signer),
    )
