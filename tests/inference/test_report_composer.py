"""The composer grounds every sentence and takes all wording from the vocabulary."""

from __future__ import annotations

import pytest

from shared.inference.report_composer import LocatedFinding, LocatedRegion, compose_report
from shared.reports.domain import ImageRef, PixelBox
from shared.vocab import load_vocab

IMAGE = ImageRef("1.2.3.4", "1.2.840.10008.5.1.4.1.1.1.1", 1)


@pytest.fixture(scope="module")
def vocab():
    return load_vocab()


def _regions(vocab, domain: str) -> list[LocatedRegion]:
    return [
        LocatedRegion(r.code, IMAGE, PixelBox(10 + i, 10, 50 + i, 60), 0.99)
        for i, r in enumerate(vocab.regions_for(domain))
    ]


def test_normal_study_has_one_grounded_sentence_per_region_and_a_normal_impression(vocab) -> None:
    report = compose_report(vocab, "cxr", _regions(vocab, "cxr"), [])
    assert len(report.findings) == len(vocab.regions_for("cxr"))
    assert all(f.finding_code is None and f.box is not None for f in report.findings)
    impression = [s for s in report.sentences if s.section == "impression"]
    assert [s.en for s in impression] == [vocab.normal.impression("en")]
    assert impression[0].zh == vocab.normal.impression("zh")
    findings_sentences = [s for s in report.sentences if s.section == "findings"]
    assert all(len(s.finding_ordinals) == 1 for s in findings_sentences)
    right_lung = vocab.region("right_lung")
    assert vocab.normal.region_sentence("zh", right_lung.zh) in [s.zh for s in findings_sentences]


def test_critical_finding_comes_first_and_the_region_is_not_also_called_normal(vocab) -> None:
    critical = next(f for f in vocab.findings_for("cxr") if f.critical)
    other = next(f for f in vocab.findings_for("cxr") if not f.critical)
    findings = [
        LocatedFinding(other.code, other.regions[0], IMAGE, PixelBox(1, 2, 30, 40), 0.97, 12.0),
        LocatedFinding(critical.code, critical.regions[0], IMAGE, PixelBox(5, 5, 9, 9), 0.6, None),
    ]
    report = compose_report(vocab, "cxr", _regions(vocab, "cxr"), findings)
    assert report.findings[0].finding_code == critical.code and report.findings[0].critical
    assert report.findings[1].finding_code == other.code
    assert "12" in report.findings[1].sentence_en
    lesion_regions = {critical.regions[0], other.regions[0]}
    normal = [f for f in report.findings if f.finding_code is None]
    assert not lesion_regions & {f.region_code for f in normal}
    impression = [s for s in report.sentences if s.section == "impression"]
    assert impression[0].finding_ordinals == [0]
    assert impression[0].en == critical.impression("en", vocab.region(critical.regions[0]))
    # Every sentence points at findings that exist.
    for sentence in report.sentences:
        assert all(0 <= o < len(report.findings) for o in sentence.finding_ordinals)


def test_repeated_lesions_share_one_impression_line(vocab) -> None:
    finding = next(f for f in vocab.findings_for("chest_ct") if not f.critical)
    region = finding.regions[0]
    findings = [
        LocatedFinding(finding.code, region, IMAGE, PixelBox(1, 1, 5, 5), 0.9, 6.0),
        LocatedFinding(finding.code, region, IMAGE, PixelBox(20, 20, 29, 29), 0.8, 9.0),
    ]
    report = compose_report(vocab, "chest_ct", _regions(vocab, "chest_ct"), findings)
    impression = [s for s in report.sentences if s.section == "impression"]
    assert len(impression) == 1 and impression[0].finding_ordinals == [0, 1]


def test_plural_region_names_agree_in_english(vocab) -> None:
    report = compose_report(vocab, "cxr", _regions(vocab, "cxr"), [])
    hilar = next(f for f in report.findings if f.region_code == "right_hilar")
    assert hilar.sentence_en == "The right hilar structures are unremarkable."
    lung = next(f for f in report.findings if f.region_code == "right_lung")
    assert lung.sentence_en == "The right lung is unremarkable."
