"""Radiologist edits: each request becomes one new report version (author, time, predecessor).

Nothing is overwritten: the previous version stays as it was, so every state the report went
through can be shown again. Editing a signed report makes an unsigned amendment (`edited`);
signing it issues the `corrected` version (see signing.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.web.reports import (
    EditRejected,
    ReportConflict,
    compose_texts,
    copy_finding,
    current_report,
    next_version,
    rejected_ordinals,
)
from services.web.schemas import (
    AddSentenceOp,
    AdjustBoxOp,
    DeleteSentenceOp,
    EditOperation,
    EditSentenceOp,
    RelabelOp,
    ReviewOp,
)
from shared.db.models import (
    FindingReview,
    Instance,
    RegionFinding,
    Report,
    ReportStatus,
    Study,
    User,
)
from shared.vocab import Vocab, VocabError, load_vocab


def _finding(findings: list[RegionFinding], ordinal: int) -> RegionFinding:
    for finding in findings:
        if finding.ordinal == ordinal:
            return finding
    raise EditRejected(f"the report has no finding {ordinal}")


def _sentence(sentences: list[dict[str, Any]], index: int) -> dict[str, Any]:
    if not 0 <= index < len(sentences):
        raise EditRejected(f"the report has no sentence {index}")
    return sentences[index]


def _review(findings: list[RegionFinding], op: ReviewOp) -> None:
    finding = _finding(findings, op.ordinal)
    if op.review == "accepted" and finding.review == FindingReview.ADJUSTED:
        return  # an adjusted finding is already an accepted one
    finding.review = op.review


def _adjust_box(db: Session, study_id: int, findings: list[RegionFinding], op: AdjustBoxOp) -> None:
    finding = _finding(findings, op.ordinal)
    uid = op.sop_instance_uid or finding.sop_instance_uid
    frame = op.frame or finding.frame_number or 1
    if uid is None:
        raise EditRejected("the finding has no image; name one with sop_instance_uid")
    instance = db.scalar(
        select(Instance).where(Instance.study_id == study_id, Instance.sop_instance_uid == uid)
    )
    if instance is None:
        raise EditRejected("the image is not part of this study")
    if frame > (instance.number_of_frames or 1):
        raise EditRejected(f"frame {frame} is beyond the image's frames")
    if (
        instance.columns
        and op.box.x2 > instance.columns
        or instance.rows
        and op.box.y2 > instance.rows
    ):
        raise EditRejected(f"box lies outside the {instance.columns}x{instance.rows} image")
    finding.sop_instance_uid = uid
    finding.frame_number = frame
    finding.x1, finding.y1, finding.x2, finding.y2 = op.box.x1, op.box.y1, op.box.x2, op.box.y2
    finding.box_flag = None
    finding.review = FindingReview.ADJUSTED


def _relabel(
    vocab: Vocab, findings: list[RegionFinding], sentences: list[dict[str, Any]], op: RelabelOp
) -> None:
    finding = _finding(findings, op.ordinal)
    try:
        region = vocab.region(op.region_code)
        info = vocab.finding(op.finding_code) if op.finding_code else None
    except VocabError as exc:
        raise EditRejected(str(exc)) from None
    old_en, old_zh = finding.sentence_en, finding.sentence_zh
    finding.region_code, finding.region_name_en, finding.region_name_zh = (
        region.code,
        region.en,
        region.zh,
    )
    if info is None:
        finding.finding_code = finding.finding_name_en = finding.finding_name_zh = None
        finding.critical = False
        finding.sentence_en = vocab.normal.region_sentence("en", region.en, plural=region.plural)
        finding.sentence_zh = vocab.normal.region_sentence("zh", region.zh)
    else:
        size = finding.size_mm or 0.0
        finding.finding_code, finding.finding_name_en, finding.finding_name_zh = (
            info.code,
            info.en,
            info.zh,
        )
        finding.critical = info.critical
        finding.sentence_en = info.sentence("en", region.en, size)
        finding.sentence_zh = info.sentence("zh", region.zh, size)
    finding.review = FindingReview.ADJUSTED
    # The sentences grounded on this finding alone follow the new label.
    for sentence in sentences:
        if sentence.get("finding_ordinals") != [finding.ordinal]:
            continue
        if sentence.get("section") == "findings" and (
            sentence.get("en") == old_en or sentence.get("zh") == old_zh
        ):
            sentence["en"], sentence["zh"] = finding.sentence_en, finding.sentence_zh
            sentence.pop("stale", None)
        elif sentence.get("section") == "impression" and info is not None:
            sentence["en"] = info.impression("en", region.en)
            sentence["zh"] = info.impression("zh", region.zh)
            sentence.pop("stale", None)
        elif sentence.get("section") == "impression":
            sentence["finding_ordinals"] = []  # a normal region has no impression line
            sentence["deleted"] = True
    sentences[:] = [s for s in sentences if not s.pop("deleted", False)]


def _edit_sentence(sentences: list[dict[str, Any]], op: EditSentenceOp) -> None:
    sentence = _sentence(sentences, op.index)
    if op.en is not None:
        sentence["en"] = op.en.strip()
    if op.zh is not None:
        sentence["zh"] = op.zh.strip()
    if op.en is not None and op.zh is not None:
        sentence.pop("stale", None)
    elif op.en is not None and sentence.get("zh"):
        sentence["stale"] = "zh"  # shown until someone updates the Chinese too
    elif op.zh is not None and sentence.get("en"):
        sentence["stale"] = "en"


def _add_sentence(sentences: list[dict[str, Any]], op: AddSentenceOp) -> None:
    if not op.en.strip() and not op.zh.strip():
        raise EditRejected("a new sentence needs English or Chinese text")
    new = {"section": op.section, "en": op.en.strip(), "zh": op.zh.strip(), "finding_ordinals": []}
    if op.en.strip() and not op.zh.strip():
        new["stale"] = "zh"
    elif op.zh.strip() and not op.en.strip():
        new["stale"] = "en"
    last = max((i for i, s in enumerate(sentences) if s.get("section") == op.section), default=None)
    if last is None:
        position = len(sentences) if op.section == "impression" else 0
    else:
        position = last + 1
    sentences.insert(position, new)


def apply_edits(
    db: Session, study: Study, user: User, base_version: int, operations: list[EditOperation]
) -> Report:
    """One new `edited` version with every operation applied, or nothing at all."""
    current = current_report(db, study.id, for_update=True)
    if current is None:
        raise ReportConflict("the study has no report to edit")
    if current.version != base_version:
        raise ReportConflict(
            f"the report is at version {current.version}, not {base_version}; reload it"
        )
    vocab = load_vocab()
    findings = [copy_finding(f) for f in current.findings]
    sentences: list[dict[str, Any]] = [dict(s) for s in current.sentences or []]
    for s in sentences:
        s["finding_ordinals"] = list(s.get("finding_ordinals") or [])
    for op in operations:
        if isinstance(op, ReviewOp):
            _review(findings, op)
        elif isinstance(op, AdjustBoxOp):
            _adjust_box(db, study.id, findings, op)
        elif isinstance(op, RelabelOp):
            _relabel(vocab, findings, sentences, op)
        elif isinstance(op, EditSentenceOp):
            _edit_sentence(sentences, op)
        elif isinstance(op, AddSentenceOp):
            _add_sentence(sentences, op)
        elif isinstance(op, DeleteSentenceOp):
            _sentence(sentences, op.index)
            del sentences[op.index]
    report = next_version(
        current, status=ReportStatus.EDITED, author_user_id=user.id, sentences=sentences
    )
    for column, value in compose_texts(sentences, rejected_ordinals(findings)).items():
        setattr(report, column, value)
    db.add(report)
    db.flush()
    for finding in findings:
        finding.report_id = report.id
        db.add(finding)
    db.flush()
    db.refresh(report, ["findings"])
    return report
