"""Radiologist edits: each request becomes one new report version (author, time, predecessor).

Nothing is overwritten: the previous version stays as it was, so every state the report went
through can be shown again. Editing a signed report makes an unsigned amendment (`edited`);
signing it issues the `corrected` version (shared/reports/lifecycle.py).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.web.schemas import (
    AddSentenceOp,
    AdjustBoxOp,
    DeleteSentenceOp,
    EditOperation,
    EditSentenceOp,
    RelabelOp,
    ReviewOp,
)
from shared.db.models import Instance, Report, Study, User
from shared.reports import lifecycle
from shared.reports.domain import ImageRef, PixelBox, RegionFindingResult, ReportSentence
from shared.vocab import Vocab, VocabError, load_vocab


class EditRejected(ValueError):
    """An edit operation that can't apply (unknown ordinal, bad code, box off the image)."""


def _finding(findings: list[RegionFindingResult], ordinal: int) -> RegionFindingResult:
    if not 0 <= ordinal < len(findings):
        raise EditRejected(f"the report has no finding {ordinal}")
    return findings[ordinal]


def _sentence(sentences: list[ReportSentence], index: int) -> ReportSentence:
    if not 0 <= index < len(sentences):
        raise EditRejected(f"the report has no sentence {index}")
    return sentences[index]


def _review(findings: list[RegionFindingResult], op: ReviewOp) -> None:
    finding = _finding(findings, op.ordinal)
    if op.review == "accepted" and finding.review == "adjusted":
        return  # an adjusted finding is already an accepted one
    finding.review = op.review


def _adjust_box(
    db: Session, study_id: int, findings: list[RegionFindingResult], op: AdjustBoxOp
) -> None:
    finding = _finding(findings, op.ordinal)
    uid = op.sop_instance_uid or (finding.image.sop_instance_uid if finding.image else None)
    frame = op.frame or (finding.image.frame if finding.image else 1)
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
    try:
        finding.box = PixelBox(op.box.x1, op.box.y1, op.box.x2, op.box.y2)
    except ValueError as exc:
        raise EditRejected(str(exc)) from None
    finding.image = ImageRef(uid, instance.sop_class_uid, frame)
    finding.box_flag = None
    finding.review = "adjusted"


def _relabel(
    vocab: Vocab,
    findings: list[RegionFindingResult],
    sentences: list[ReportSentence],
    op: RelabelOp,
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
        finding.sentence_en = info.sentence("en", region, size)
        finding.sentence_zh = info.sentence("zh", region, size)
    finding.review = "adjusted"
    # The sentences grounded on this finding alone follow the new label.
    dropped: list[ReportSentence] = []
    for sentence in sentences:
        if sentence.finding_ordinals != [op.ordinal]:
            continue
        if sentence.section == "findings" and (sentence.en == old_en or sentence.zh == old_zh):
            sentence.en, sentence.zh = finding.sentence_en, finding.sentence_zh
            sentence.stale = None
        elif sentence.section == "impression" and info is not None:
            sentence.en = info.impression("en", region)
            sentence.zh = info.impression("zh", region)
            sentence.stale = None
        elif sentence.section == "impression":
            dropped.append(sentence)  # a normal region has no impression line
    sentences[:] = [s for s in sentences if not any(s is d for d in dropped)]


def _edit_sentence(sentences: list[ReportSentence], op: EditSentenceOp) -> None:
    sentence = _sentence(sentences, op.index)
    if op.en is not None:
        sentence.en = op.en.strip()
    if op.zh is not None:
        sentence.zh = op.zh.strip()
    if op.en is not None and op.zh is not None:
        sentence.stale = None
    elif op.en is not None and sentence.zh:
        sentence.stale = "zh"  # shown until someone updates the Chinese too
    elif op.zh is not None and sentence.en:
        sentence.stale = "en"


def _add_sentence(sentences: list[ReportSentence], op: AddSentenceOp) -> None:
    en, zh = op.en.strip(), op.zh.strip()
    if not en and not zh:
        raise EditRejected("a new sentence needs English or Chinese text")
    new = ReportSentence(
        section=op.section, en=en, zh=zh, stale="zh" if not zh else "en" if not en else None
    )
    last = max((i for i, s in enumerate(sentences) if s.section == op.section), default=None)
    if last is None:
        position = len(sentences) if op.section == "impression" else 0
    else:
        position = last + 1
    sentences.insert(position, new)


def apply_edits(
    db: Session, study: Study, user: User, base_version: int, operations: list[EditOperation]
) -> Report:
    """One new `edited` version with every operation applied, or nothing at all."""
    version = lifecycle.editable_version(db, study, base_version)
    vocab = load_vocab()
    findings, sentences = version.findings, version.sentences
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
    return lifecycle.new_edited_version(db, study, user, base_version, findings, sentences)
