"""Typed, validated access to the vocabulary JSON files."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

VOCAB_DIR = Path(__file__).resolve().parent
Language = Literal["en", "zh"]


class VocabError(ValueError):
    """A vocabulary file is inconsistent, or a code is unknown."""


@dataclass(frozen=True)
class CodedConcept:
    scheme: str  # "SCT" (SNOMED CT)
    code: str
    meaning: str


@dataclass(frozen=True)
class RegionInfo:
    code: str
    domains: tuple[str, ...]
    en: str
    zh: str
    snomed: CodedConcept
    laterality: CodedConcept | None  # modifier for the generic structure code, if lateral
    synonyms_en: tuple[str, ...]
    synonyms_zh: tuple[str, ...]
    plural: bool = False  # English agreement: "the hilar structures are …"
    side_en: str = ""  # the laterality as an adjective ("right"); "" for midline regions
    side_zh: str = ""  # "右侧"

    def name(self, lang: Language) -> str:
        return self.en if lang == "en" else self.zh

    def side(self, lang: Language) -> str:
        return self.side_en if lang == "en" else self.side_zh


@dataclass(frozen=True)
class FindingInfo:
    code: str
    domains: tuple[str, ...]
    en: str
    zh: str
    snomed: CodedConcept
    critical: bool
    regions: tuple[str, ...]  # region codes this finding may lie in
    label_en: str  # templates: see the note in findings.json
    label_zh: str
    sentence_en: str
    sentence_zh: str
    impression_en: str
    impression_zh: str
    synonyms_en: tuple[str, ...] = ()  # other names (MedRegA's lesion names, in <ref>)
    synonyms_zh: tuple[str, ...] = ()
    terms_en: tuple[str, ...] = ()  # words that mention it in free text
    terms_zh: tuple[str, ...] = ()

    def name(self, lang: Language) -> str:
        return self.en if lang == "en" else self.zh

    def label(self, lang: Language, region: RegionInfo) -> str:
        """The finding's short name in its region, as a radiologist writes it: "Right pleural
        effusion", "右侧胸腔积液"."""
        return _capitalised(
            self._fill(self.label_en if lang == "en" else self.label_zh, region, lang)
        )

    def sentence(self, lang: Language, region: RegionInfo, size_mm: float) -> str:
        """The findings-section sentence, with the size."""
        template = self.sentence_en if lang == "en" else self.sentence_zh
        return self._fill(template, region, lang, size_mm=round(size_mm))

    def impression(self, lang: Language, region: RegionInfo) -> str:
        template = self.impression_en if lang == "en" else self.impression_zh
        return self._fill(template, region, lang)

    def _fill(self, template: str, region: RegionInfo, lang: Language, **extra: object) -> str:
        side, name = region.side(lang), region.name(lang)
        values: dict[str, object] = {
            "side": side,
            "Side": _capitalised(side),
            "region": name,
            "Region": _capitalised(name),
            **extra,
        }
        if "{label" in template.lower():
            label = self._fill(self.label_en if lang == "en" else self.label_zh, region, lang)
            values.update(label=label, Label=_capitalised(label))
        # A side-less region leaves a double space in "{side} pneumothorax".
        return re.sub(" {2,}", " ", template.format(**values)).strip()


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class NormalWording:
    region_sentence_en: str
    region_sentence_zh: str
    impression_en: str
    impression_zh: str
    region_sentence_plural_en: str = ""  # for plural region names; Chinese needs none
    label_en: str = "{Region}: normal"  # a normal region's short label ({region}/{Region})
    label_zh: str = "{region}：未见异常"

    def region_sentence(self, lang: Language, region_name: str, plural: bool = False) -> str:
        template = self.region_sentence_en if lang == "en" else self.region_sentence_zh
        if lang == "en" and plural and self.region_sentence_plural_en:
            template = self.region_sentence_plural_en
        return template.format(region=region_name)

    def impression(self, lang: Language) -> str:
        return self.impression_en if lang == "en" else self.impression_zh

    def label(self, lang: Language, region: RegionInfo) -> str:
        name = region.name(lang)
        template = self.label_en if lang == "en" else self.label_zh
        return template.format(region=name, Region=_capitalised(name))


@dataclass(frozen=True)
class DomainInfo:
    code: str
    en: str
    zh: str
    modalities: tuple[str, ...]
    body_part: str
    # Region codes in the groups one phrase-grounding prompt names together (a served MedRegA).
    grounding_groups: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class Vocab:
    version: str
    regions: tuple[RegionInfo, ...]  # file order; the model's own order lives in its metadata
    findings: tuple[FindingInfo, ...]
    domains: tuple[DomainInfo, ...]
    normal: NormalWording

    def region(self, code: str) -> RegionInfo:
        for region in self.regions:
            if region.code == code:
                return region
        raise VocabError(f"unknown region code {code!r}")

    def finding(self, code: str) -> FindingInfo:
        for finding in self.findings:
            if finding.code == code:
                return finding
        raise VocabError(f"unknown finding code {code!r}")

    def domain(self, code: str) -> DomainInfo:
        for domain in self.domains:
            if domain.code == code:
                return domain
        raise VocabError(f"unknown domain code {code!r}")

    def regions_for(self, domain: str) -> tuple[RegionInfo, ...]:
        return tuple(r for r in self.regions if domain in r.domains)

    def findings_for(self, domain: str) -> tuple[FindingInfo, ...]:
        return tuple(f for f in self.findings if domain in f.domains)

    @property
    def region_codes(self) -> tuple[str, ...]:
        return tuple(r.code for r in self.regions)

    @property
    def finding_codes(self) -> tuple[str, ...]:
        return tuple(f.code for f in self.findings)


def _concept(raw: dict[str, Any]) -> CodedConcept:
    return CodedConcept(scheme=raw.get("scheme", "SCT"), code=raw["code"], meaning=raw["meaning"])


def _read(name: str, directory: Path) -> dict[str, Any]:
    with open(directory / name, encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def _check_phrasing(finding: FindingInfo, regions: list[RegionInfo]) -> None:
    """Every template fills for every region the finding may lie in: a typo in a placeholder
    fails at load, not in a worker drafting a report."""
    for region in regions:
        for lang in ("en", "zh"):
            try:
                sentence = finding.sentence(lang, region, 12)
                finding.impression(lang, region)
                finding.label(lang, region)
            except (KeyError, IndexError, ValueError) as exc:
                raise VocabError(f"{finding.code}: bad {lang} phrasing template ({exc})") from None
            if "12" not in sentence:
                raise VocabError(f"{finding.code}: the {lang} sentence does not state the size")


@lru_cache(maxsize=4)
def load_vocab(directory: Path = VOCAB_DIR) -> Vocab:
    """Read and cross-check regions.json, findings.json and domains.json."""
    regions_raw = _read("regions.json", directory)
    findings_raw = _read("findings.json", directory)
    domains_raw = _read("domains.json", directory)
    versions = {regions_raw["version"], findings_raw["version"], domains_raw["version"]}
    if len(versions) != 1:
        raise VocabError(f"vocabulary files disagree on the version: {sorted(versions)}")

    laterality = {k: _concept(v) for k, v in regions_raw["laterality_codes"].items()}
    sides = {k: (v["en"], v["zh"]) for k, v in regions_raw["laterality_codes"].items()}
    domains = tuple(
        DomainInfo(
            code=d["code"],
            en=d["en"],
            zh=d["zh"],
            modalities=tuple(d["modalities"]),
            body_part=d["body_part"],
            grounding_groups=tuple(tuple(g) for g in d.get("grounding_groups", ())),
        )
        for d in domains_raw["domains"]
    )
    domain_codes = {d.code for d in domains}
    regions = tuple(
        RegionInfo(
            code=r["code"],
            domains=tuple(r["domains"]),
            en=r["en"],
            zh=r["zh"],
            snomed=_concept(r["snomed"]),
            laterality=laterality[r["laterality"]] if r["laterality"] else None,
            synonyms_en=tuple(r["synonyms_en"]),
            synonyms_zh=tuple(r["synonyms_zh"]),
            plural=bool(r.get("plural", False)),
            side_en=sides[r["laterality"]][0] if r["laterality"] else "",
            side_zh=sides[r["laterality"]][1] if r["laterality"] else "",
        )
        for r in regions_raw["regions"]
    )
    findings = tuple(
        FindingInfo(
            code=f["code"],
            domains=tuple(f["domains"]),
            en=f["en"],
            zh=f["zh"],
            snomed=_concept(f["snomed"]),
            critical=bool(f["critical"]),
            regions=tuple(f["regions"]),
            label_en=f["label_en"],
            label_zh=f["label_zh"],
            sentence_en=f["sentence_en"],
            sentence_zh=f["sentence_zh"],
            impression_en=f["impression_en"],
            impression_zh=f["impression_zh"],
            synonyms_en=tuple(f.get("synonyms_en", ())),
            synonyms_zh=tuple(f.get("synonyms_zh", ())),
            terms_en=tuple(f.get("terms_en", ())),
            terms_zh=tuple(f.get("terms_zh", ())),
        )
        for f in findings_raw["findings"]
    )
    normal = NormalWording(**findings_raw["normal"])

    region_codes = [r.code for r in regions]
    finding_codes = [f.code for f in findings]
    for codes, what in ((region_codes, "region"), (finding_codes, "finding")):
        if len(set(codes)) != len(codes):
            raise VocabError(f"duplicate {what} codes")
    for code, item_domains in [(r.code, r.domains) for r in regions] + [
        (f.code, f.domains) for f in findings
    ]:
        unknown = set(item_domains) - domain_codes
        if unknown:
            raise VocabError(f"{code}: unknown domains {sorted(unknown)}")
    for finding in findings:
        unknown = set(finding.regions) - set(region_codes)
        if unknown:
            raise VocabError(f"{finding.code}: unknown regions {sorted(unknown)}")
    for finding in findings:
        _check_phrasing(finding, [r for r in regions if r.code in finding.regions])
    for domain in domains:
        grouped = [code for group in domain.grounding_groups for code in group]
        expected = sorted(r.code for r in regions if domain.code in r.domains)
        if domain.grounding_groups and sorted(grouped) != expected:
            raise VocabError(
                f"{domain.code}: grounding_groups must hold each of its regions once "
                f"(got {sorted(grouped)}, regions {expected})"
            )
    return Vocab(
        version=versions.pop(),
        regions=regions,
        findings=findings,
        domains=domains,
        normal=normal,
    )
