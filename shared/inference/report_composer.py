"""From located regions and findings to a grounded bilingual report.

MedRegA's grounded report ties every sentence to a region box. We do the same: the findings
section has one sentence per abnormal finding (grounded to the lesion's box) and one per normal
region (grounded to the region's box); the impression summarises the abnormal findings or says
the study is unremarkable. All wording comes from `shared/vocab` — none lives in code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shared.reports.domain import (
    ImageRef,
    PixelBox,
    RegionFindingResult,
    ReportSentence,
)
from shared.vocab import Vocab


@dataclass(frozen=True)
class LocatedRegion:
    """A region the model found, on the image where it is seen best."""

    region_code: str
    image: ImageRef
    box: PixelBox
    probability: float | None  # None: the backend gives none (a served MedRegA)


@dataclass(frozen=True)
class LocatedFinding:
    """An abnormality at study level, on its key image."""

    finding_code: str
    region_code: str
    image: ImageRef
    box: PixelBox
    probability: float | None
    size_mm: float | None


@dataclass
class ComposedReport:
    findings: list[RegionFindingResult]
    sentences: list[ReportSentence]


def _finding_order(vocab: Vocab, finding: LocatedFinding) -> tuple[int, float]:
    """Critical first, then the most certain."""
    critical = vocab.finding(finding.finding_code).critical
    return (0 if critical else 1, -(finding.probability or 0.0))


def compose_report(
    vocab: Vocab,
    domain: str,
    regions: Sequence[LocatedRegion],
    findings: Sequence[LocatedFinding],
) -> ComposedReport:
    """Findings section (abnormal first, then each normal region) and an impression."""
    results: list[RegionFindingResult] = []
    sentences: list[ReportSentence] = []

    for finding in sorted(findings, key=lambda f: _finding_order(vocab, f)):
        info = vocab.finding(finding.finding_code)
        region = vocab.region(finding.region_code)
        size = finding.size_mm if finding.size_mm is not None else 0.0
        results.append(
            RegionFindingResult(
                region_code=region.code,
                region_name_en=region.en,
                region_name_zh=region.zh,
                finding_code=info.code,
                finding_name_en=info.en,
                finding_name_zh=info.zh,
                probability=finding.probability,
                image=finding.image,
                box=finding.box,
                sentence_en=info.sentence("en", region, size),
                sentence_zh=info.sentence("zh", region, size),
                size_mm=finding.size_mm,
                critical=info.critical,
            )
        )
    abnormal_regions = {f.region_code for f in findings}
    domain_order = [r.code for r in vocab.regions_for(domain)]
    for located in sorted(regions, key=lambda r: domain_order.index(r.region_code)):
        if located.region_code in abnormal_regions:
            continue
        region = vocab.region(located.region_code)
        results.append(
            RegionFindingResult(
                region_code=region.code,
                region_name_en=region.en,
                region_name_zh=region.zh,
                finding_code=None,
                finding_name_en=None,
                finding_name_zh=None,
                probability=located.probability,
                image=located.image,
                box=located.box,
                sentence_en=vocab.normal.region_sentence("en", region.en, plural=region.plural),
                sentence_zh=vocab.normal.region_sentence("zh", region.zh),
            )
        )

    for ordinal, result in enumerate(results):
        sentences.append(
            ReportSentence("findings", result.sentence_en, result.sentence_zh, [ordinal])
        )

    abnormal = [(i, r) for i, r in enumerate(results) if r.finding_code is not None]
    if not abnormal:
        sentences.append(
            ReportSentence(
                "impression", vocab.normal.impression("en"), vocab.normal.impression("zh")
            )
        )
    # One impression line per distinct (finding, region); repeated lesions share it.
    seen: dict[tuple[str, str], ReportSentence] = {}
    for ordinal, result in abnormal:
        assert result.finding_code is not None
        key = (result.finding_code, result.region_code)
        if key in seen:
            seen[key].finding_ordinals.append(ordinal)
            continue
        info = vocab.finding(result.finding_code)
        region = vocab.region(result.region_code)
        sentence = ReportSentence(
            "impression",
            info.impression("en", region),
            info.impression("zh", region),
            [ordinal],
        )
        seen[key] = sentence
        sentences.append(sentence)
    return ComposedReport(results, sentences)
