"""A finding is named the way a radiologist writes it, in both languages, from the vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.inference.report_composer import LocatedFinding, LocatedRegion, compose_report
from shared.inference.text_mentions import mentioned_region
from shared.reports.domain import ImageRef, PixelBox
from shared.vocab import VocabError, bilingual_label, finding_label, load_vocab
from shared.vocab.loader import VOCAB_DIR

IMAGE = ImageRef("1.2.3.4", "1.2.840.10008.5.1.4.1.1.1.1", 0)


@pytest.mark.parametrize(
    ("finding", "region", "en", "zh"),
    [
        ("pleural_effusion", "right_lung", "Right pleural effusion", "右侧胸腔积液"),
        ("pleural_effusion", "left_lung", "Left pleural effusion", "左侧胸腔积液"),
        ("pneumothorax", "left_lung", "Left pneumothorax", "左侧气胸"),
        ("lung_nodule", "right_lung", "Right pulmonary nodule", "右肺结节"),
        ("kidney_lesion", "left_kidney", "Left renal lesion", "左肾占位"),
        ("cardiomegaly", "cardiac_silhouette", "Cardiomegaly", "心影增大"),
        ("liver_lesion", "liver", "Liver lesion", "肝脏占位"),
    ],
)
def test_labels_name_the_finding_and_its_side(finding: str, region: str, en: str, zh: str) -> None:
    assert finding_label(finding, region, "en") == en
    assert finding_label(finding, region, "zh") == zh


def test_bilingual_label_with_certainty() -> None:
    label = bilingual_label("pleural_effusion", "right_lung", probability=0.914)
    assert label == "Right pleural effusion / 右侧胸腔积液 (p 0.91)"
    assert bilingual_label("pleural_effusion", "right_lung", ["zh"]) == "右侧胸腔积液"
    with pytest.raises(VocabError):
        finding_label("pleural_effusion", "no_such_region", "en")
    with pytest.raises(ValueError):
        bilingual_label("pleural_effusion", "right_lung", [])


def test_a_side_less_region_leaves_no_stray_space() -> None:
    """A relabel may put a lateral finding in a midline region: the side is simply left out."""
    vocab = load_vocab()
    assert vocab.finding("pneumothorax").label("en", vocab.region("mediastinum")) == "Pneumothorax"
    assert vocab.finding("pneumothorax").label("zh", vocab.region("mediastinum")) == "气胸"


def test_the_composed_report_reads_like_a_radiologists() -> None:
    vocab = load_vocab()
    region = LocatedRegion("left_lung", IMAGE, PixelBox(300, 10, 500, 400), 0.99)
    effusion = LocatedFinding(
        "pleural_effusion", "right_lung", IMAGE, PixelBox(10, 300, 200, 400), 0.91, 31.6
    )
    report = compose_report(vocab, "cxr", [region], [effusion])
    impression = [s for s in report.sentences if s.section == "impression"]
    assert [(s.en, s.zh) for s in impression] == [("Right pleural effusion.", "右侧胸腔积液。")]
    first = report.findings[0]
    assert first.sentence_en == "Right pleural effusion, approximately 32 mm in depth."
    assert first.sentence_zh == "右侧胸腔积液，液深约32 mm。"


@pytest.mark.parametrize(
    ("text", "language", "want"),
    [
        ("Right pleural effusion.", "en", "right_lung"),
        ("左侧胸腔积液。", "zh", "left_lung"),
        ("A 9 mm nodule is seen in the left lung.", "en", "left_lung"),
        ("Pleural effusions on the right and the left.", "en", None),  # both sides: undecided
        ("Pleural effusion.", "en", None),
    ],
)
def test_a_sentence_naming_only_the_side_places_the_lesion(
    text: str, language: str, want: str | None
) -> None:
    allowed = ("right_lung", "left_lung")
    assert mentioned_region(text, language, allowed, load_vocab()) == want  # type: ignore[arg-type]


def test_a_template_with_an_unknown_placeholder_fails_at_load(tmp_path: Path) -> None:
    for name in ("regions.json", "findings.json", "domains.json"):
        (tmp_path / name).write_text((VOCAB_DIR / name).read_text(encoding="utf-8"), "utf-8")
    findings = json.loads((tmp_path / "findings.json").read_text(encoding="utf-8"))
    findings["findings"][0]["impression_en"] = "{lable} in the {region}."
    (tmp_path / "findings.json").write_text(json.dumps(findings), encoding="utf-8")
    with pytest.raises(VocabError, match="lung_nodule: bad en phrasing template"):
        load_vocab(tmp_path)
