"""Region, finding and domain vocabularies (English + Chinese, SNOMED CT codes).

The JSON files next to this module are the one place for these facts; the model, the report
composer, the SR builder and the UI all read them through `load_vocab()`.
"""

from shared.vocab.loader import (
    CodedConcept,
    DomainInfo,
    FindingInfo,
    NormalWording,
    RegionInfo,
    Vocab,
    VocabError,
    load_vocab,
)
from shared.vocab.phrasing import bilingual_label, finding_label

__all__ = [
    "CodedConcept",
    "DomainInfo",
    "FindingInfo",
    "NormalWording",
    "RegionInfo",
    "Vocab",
    "VocabError",
    "bilingual_label",
    "finding_label",
    "load_vocab",
]
