"""The model's label spaces, in the order the exported graph uses (read from shared/vocab)."""

from __future__ import annotations

from model.phantoms.types import DOMAINS
from shared.vocab import load_vocab

VOCAB = load_vocab()
REGION_CODES: tuple[str, ...] = VOCAB.region_codes
FINDING_CODES: tuple[str, ...] = VOCAB.finding_codes
DOMAIN_OUTPUTS: tuple[str, ...] = (*DOMAINS, "unsupported")
UNSUPPORTED = len(DOMAINS)
REGION_INDEX = {c: i for i, c in enumerate(REGION_CODES)}
FINDING_INDEX = {c: i for i, c in enumerate(FINDING_CODES)}
