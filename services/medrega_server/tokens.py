"""Token counts for `usage`, without MedRegA's tokenizer.

The counts are an honest approximation, documented rather than invented: each of InternVL's
grounding tags (`<ref>`, `</ref>`, `<box>`, `</box>`) is one token (they are special tokens
there), every CJK character is one token (Yi's tokenizer spends about one per character), every
other run of letters/digits is one token, and every other non-space character (punctuation,
brackets) is one token. An image counts as MedRegA's 256 visual tokens (one 448×448 tile).

`max_tokens` is accepted but does not cut answers: they are complete structured text (a cut
report loses boxes mid-way) and these counts are only approximate.
"""

from __future__ import annotations

import re

IMAGE_TOKENS = 256
_CJK_CHARS = "\u3400-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"</?(?:ref|box)>|[{_CJK_CHARS}]|[^\W_{_CJK_CHARS}]+|\S")


def count_tokens(text: str) -> int:
    return sum(1 for _ in _TOKEN.finditer(text))
