"""A finding's label by codes: the one call the SR, GSPS and review page make to name a finding.

The wording itself lives in findings.json (`label_*`) and regions.json (the side adjectives); this
module only looks the codes up and joins the languages.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.vocab.loader import Language, Vocab, load_vocab

LABEL_JOINER = " / "


def finding_label(
    finding_code: str | None, region_code: str, lang: Language, vocab: Vocab | None = None
) -> str:
    """A finding's name with its side: "Right pleural effusion" (en), "右侧胸腔积液" (zh); a
    normal region (no finding code): "Left lung: normal", "左肺：未见异常". Unknown codes raise
    VocabError."""
    vocab = vocab or load_vocab()
    region = vocab.region(region_code)
    if finding_code is None:
        return vocab.normal.label(lang, region)
    return vocab.finding(finding_code).label(lang, region)


def bilingual_label(
    finding_code: str | None,
    region_code: str,
    languages: Sequence[Language] = ("en", "zh"),
    probability: float | None = None,
    vocab: Vocab | None = None,
) -> str:
    """The label in each language, then the model's certainty where it gave one:
    "Right pleural effusion / 右侧胸腔积液 (p 0.91)"."""
    if not languages:
        raise ValueError("at least one language is needed for a label")
    text = LABEL_JOINER.join(
        dict.fromkeys(finding_label(finding_code, region_code, lang, vocab) for lang in languages)
    )
    return text if probability is None else f"{text} (p {probability:.2f})"
