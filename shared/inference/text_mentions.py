"""What a served model's sentence says: which findings it affirms and which regions it names.

A grounded MLLM ties each sentence to a box but gives no finding code. "<ref>right lung</ref>…:
A 12 mm nodule is seen." affirms a nodule in the right lung; "No focal consolidation, pleural
effusion, or pneumothorax is seen." affirms nothing. A small NegEx-style rule decides: a term is
negated when a negation cue comes before it in the same clause (clauses end at sentence
punctuation and at "but"/"但"). Terms come from the vocabulary (`terms_*` of each finding), and
only findings allowed in the sentence's region count, so a generic word like "lesion" is
unambiguous in the liver.
"""

from __future__ import annotations

import re

from shared.reports.domain import Language
from shared.vocab import FindingInfo, RegionInfo, Vocab

_CLAUSE_END = re.compile(r"[.;。；!！?？\n]|\bbut\b|\bhowever\b|但|然而", re.IGNORECASE)
_NEGATION_EN = re.compile(
    r"\b(no|not|without|negative for|free of|absence of|absent|resolved|ruled out)\b", re.I
)
_NEGATION_ZH = re.compile(r"无|未见|未|没有|不|排除")


def _terms(finding: FindingInfo, language: Language) -> tuple[str, ...]:
    if language == "zh":
        return (finding.zh, *finding.synonyms_zh, *finding.terms_zh)
    return (finding.en, *finding.synonyms_en, *finding.terms_en)


def _affirmed(clause: str, term: str, language: Language) -> bool:
    if language == "zh":
        positions = [m.start() for m in re.finditer(re.escape(term), clause)]
        negation = _NEGATION_ZH
    else:
        positions = [
            # English plurals count too ("bilateral effusions").
            m.start()
            for m in re.finditer(rf"\b{re.escape(term)}(?:s|es)?\b", clause, re.IGNORECASE)
        ]
        negation = _NEGATION_EN
    return any(not negation.search(clause[:start]) for start in positions)


def affirmed_findings(
    text: str, language: Language, region_code: str, domain: str | None, vocab: Vocab
) -> list[str]:
    """Finding codes the text affirms for this region (vocabulary order, no duplicates)."""
    clauses = [c for c in _CLAUSE_END.split(text) if c and c.strip()]
    found: list[str] = []
    for finding in vocab.findings:
        if region_code not in finding.regions or (domain and domain not in finding.domains):
            continue
        if any(_affirmed(c, t, language) for c in clauses for t in _terms(finding, language)):
            found.append(finding.code)
    return found


def _region_names(region: RegionInfo, language: Language) -> tuple[str, ...]:
    if language == "zh":
        return (region.zh, *region.synonyms_zh)
    return (region.en, *region.synonyms_en)


def mentioned_region(
    text: str, language: Language, allowed: tuple[str, ...], vocab: Vocab
) -> str | None:
    """The region (among `allowed` codes) the text names; the longest name wins ("right lower
    lung zone" over "right lung"). A text naming no region but one side ("Right pleural
    effusion.", "右侧胸腔积液。") means the allowed region on that side."""
    best: tuple[int, str] | None = None
    lowered = text.lower()
    for code in allowed:
        for name in _region_names(vocab.region(code), language):
            if name and name.lower() in lowered and (best is None or len(name) > best[0]):
                best = (len(name), code)
    return best[1] if best else _region_by_side(text, language, allowed, vocab)


def _region_by_side(
    text: str, language: Language, allowed: tuple[str, ...], vocab: Vocab
) -> str | None:
    on_named_side = []
    for code in allowed:
        side = vocab.region(code).side(language)
        if not side:
            continue
        if language == "zh":
            named = side in text
        else:
            named = re.search(rf"\b{re.escape(side)}\b", text, re.IGNORECASE) is not None
        if named:
            on_named_side.append(code)
    return on_named_side[0] if len(on_named_side) == 1 else None


def affirmed_in_domain(text: str, language: Language, domain: str, vocab: Vocab) -> list[str]:
    """Finding codes of the domain an ungrounded text (a plain report) affirms, vocabulary order.

    With no region to go by, a term several findings share ("lesion", "占位") counts only in a
    clause that names one of the finding's regions ("肝脏占位" is the liver's, not the kidney's)."""
    findings = vocab.findings_for(domain)
    owners: dict[str, set[str]] = {}
    for finding in findings:
        for term in _terms(finding, language):
            owners.setdefault(term.casefold(), set()).add(finding.code)
    found: set[str] = set()
    for clause in (c for c in _CLAUSE_END.split(text) if c and c.strip()):
        for finding in findings:
            terms = [t for t in _terms(finding, language) if _affirmed(clause, t, language)]
            if not terms:
                continue
            specific = any(len(owners[t.casefold()]) == 1 for t in terms)
            if specific or mentioned_region(clause, language, finding.regions, vocab):
                found.add(finding.code)
    return [f.code for f in findings if f.code in found]
