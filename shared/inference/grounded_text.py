"""MedRegA's grounded text: read region names and boxes out of its answers, and write them.

MedRegA (a medical MLLM, see REFERENCE.md) puts regions into its text like this::

    <ref>right lung</ref><box>[[102, 106, 481, 910]]</box>, <ref>left lung</ref><box>[[535, 128,
    923, 889]]</box>: No focal consolidation, pleural effusion, or pneumothorax is seen.

* A box is ``[x1, y1, x2, y2]``: top-left and bottom-right corners as integers on a 0..scale grid
  (scale 999; some deployments use 1000), relative to the ORIGINAL image. The model stretches the
  image to a square, so ``pixel_x = v / scale * width`` and ``pixel_y = v / scale * height``.
* One name may have several boxes (``[[…], […]]``); several names are joined by ``,`` / ``，``.
* In grounded reports a colon (``:`` English, ``：`` Chinese) follows the boxes, then the
  description, which runs until the next name group starts. A locate answer has no colon.
* With the usual decoding the tags are stripped (``right lung[[…]]: …``), and triple brackets
  ``[[[…]]]`` occur. An untagged name is the text before ``[[`` back to the previous delimiter
  (sentence end, newline, comma or colon).

Model output is untrusted: `parse_grounded` never raises on it. Unusable boxes are flagged
(`ParsedBox.flag`), names outside our vocabulary are kept verbatim with kind ``"unknown"``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from shared.reports.domain import Language, PixelBox
from shared.vocab import Vocab, load_vocab

DEFAULT_SCALE = 999

Kind = Literal["region", "finding", "unknown"]

# A tagged name, and a box list: `<box>…</box>` (any brackets inside) or bare `[[…], […]]` /
# `[[[…]]]`. The bare form's pieces are unambiguous, so the regex cannot backtrack badly.
_REF = r"<ref>(?P<name>[^<>]*)</ref>"
_BOX = (
    r"<box>(?P<tagged>[^<>]*)</box>"
    r"|\[\[\[?(?P<bare>[^\[\]<>]*(?:\]\s*(?:[,，、]\s*)?\[[^\[\]<>]*)*)\]?\]\]"
)
_TOKEN = re.compile(f"{_REF}|{_BOX}")
_BOX_ONLY = re.compile(_BOX)
_TAG = re.compile(r"</?(?:ref|box)>")
_NUMBER = re.compile(r"[-+]?[0-9]+(?:\.[0-9]+)?")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_SENTENCE_END = re.compile(r"[.。;；!！?？\n]")

_COMMAS = ",，、"
_COLONS = ":："
# Where an untagged name starts: after the last of these before its `[[`.
_DELIMITERS = ".。;；!！?？\n\r" + _COMMAS + _COLONS
_SEPARATORS = re.compile(rf"[\s{_COMMAS}]*")  # between boxes of one name
_NAME_JOIN = re.compile(rf"\s*[{_COMMAS}][\s{_COMMAS}]*")  # between names of one group
_DESCRIPTION_LEAD = " \t\r\n" + _COLONS + _COMMAS + ".。;；"
_NAME_DECORATION = " \t\r\n*\"'`“”‘’-•"  # markdown bullets and quotes around a name

# The sentence around a bare name in an identify answer: "It is the left lung.", "这是左肺。"
_ANSWER_FRAME = re.compile(
    r"^(?:(?:it|this|that)(?:\s+(?:region|area|structure|box))?\s+"
    r"(?:is|shows|represents|appears\s+to\s+be)\s+|it's\s+|(?:the\s+)?answer\s+is:?\s+"
    r"|这是|此为|此处为|该区域为|该区域是|该处为|该部位为|图中为|为|是)(?:(?:the|a|an)\s+)?",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ParsedBox:
    raw: tuple[int, ...]  # the integers as written (normally 4)
    pixel: PixelBox | None  # source-pixel box; None when unusable
    flag: str | None  # None, "out_of_range" (clipped), "inverted" or "malformed"


@dataclass(frozen=True)
class GroundedName:
    text: str  # as written (tags/whitespace stripped)
    kind: Kind
    code: str | None  # vocabulary code, None when unknown
    boxes: tuple[ParsedBox, ...]  # may be empty (missing box)


@dataclass(frozen=True)
class GroundedSegment:
    names: tuple[GroundedName, ...]  # empty for free text before any name
    text: str  # the description after the colon, stripped ('' if none)


@dataclass(frozen=True)
class GroundedAnswer:
    segments: tuple[GroundedSegment, ...]
    language: Language  # of the prose (of the names when there is no prose)
    raw: str


def to_text_box(
    box: PixelBox, width: int, height: int, scale: int = DEFAULT_SCALE
) -> tuple[int, int, int, int]:
    """Source pixels → MedRegA's integer grid."""

    def grid(value: float, size: int) -> int:
        return min(max(round(value / size * scale), 0), scale)

    return (grid(box.x1, width), grid(box.y1, height), grid(box.x2, width), grid(box.y2, height))


def to_pixel_box(
    raw: Sequence[int], width: int, height: int, scale: int = DEFAULT_SCALE
) -> ParsedBox:
    """MedRegA's integer grid → source pixels, flagging what cannot be used as written."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    values = tuple(int(v) for v in raw)
    if len(values) != 4:
        return ParsedBox(values, None, "malformed")
    x1, y1, x2, y2 = values
    if x1 >= x2 or y1 >= y2:
        return ParsedBox(values, None, "inverted")
    cx1, cy1, cx2, cy2 = (min(max(v, 0), scale) for v in values)
    flag = "out_of_range" if (cx1, cy1, cx2, cy2) != values else None
    px1, px2 = cx1 / scale * width, cx2 / scale * width
    py1, py2 = cy1 / scale * height, cy2 / scale * height
    # Clipping can collapse a box (both x beyond the edge); never build an invalid PixelBox.
    pixel = PixelBox(px1, py1, px2, py2) if px2 > px1 and py2 > py1 else None
    return ParsedBox(values, pixel, flag)


def _key(name: str) -> str:
    text = " ".join(_TAG.sub("", name).split()).casefold()
    if _CJK.search(text):
        text = text.replace(" ", "")  # Chinese names match exactly, spaces aside
    return text.removeprefix("the ")


@lru_cache(maxsize=8)
def _index(vocab: Vocab) -> dict[str, tuple[Kind, str]]:
    # First claim wins: a region's own name beats another region's synonym ("heart" is the
    # region heart, though cardiac_silhouette lists it as a synonym), regions beat findings.
    entries: list[tuple[str, Kind, str]] = []
    entries += [(n, "region", r.code) for r in vocab.regions for n in (r.en, r.zh)]
    entries += [
        (n, "region", r.code) for r in vocab.regions for n in (*r.synonyms_en, *r.synonyms_zh)
    ]
    entries += [(r.code, "region", r.code) for r in vocab.regions]  # API clients send codes
    entries += [(n, "finding", f.code) for f in vocab.findings for n in (f.en, f.zh)]
    # Finding synonyms: MedRegA's lesion names such as "pancreas cancer" / "胰腺癌".
    entries += [
        (n, "finding", f.code) for f in vocab.findings for n in (*f.synonyms_en, *f.synonyms_zh)
    ]
    index: dict[str, tuple[Kind, str]] = {}
    for name, kind, code in entries:
        index.setdefault(_key(name), (kind, code))
    return index


def _lookup(name: str, index: dict[str, tuple[Kind, str]]) -> tuple[Kind, str | None]:
    return index.get(_key(name), ("unknown", None))


def normalise_name(name: str, vocab: Vocab) -> tuple[Kind, str | None]:
    """A region or finding code for a name as the model wrote it (EN or ZH), else unknown."""
    return _lookup(name, _index(vocab))


def region_code(name: str, vocab: Vocab) -> str | None:
    """The region a name (EN or ZH, synonym, or code) stands for; None for anything else."""
    kind, code = normalise_name(name, vocab)
    return code if kind == "region" else None


def detect_language(text: str) -> Language:
    return "zh" if _CJK.search(text) else "en"


def _clean(text: str) -> str:
    return " ".join(_TAG.sub("", text).split()).strip(_NAME_DECORATION)


def _boxes(inner: str, width: int, height: int, scale: int) -> list[ParsedBox]:
    boxes = []
    for piece in re.split(r"[\[\]]+", inner):
        numbers = _NUMBER.findall(piece)
        if numbers:  # pieces without numbers are separators (or junk: a missing box)
            boxes.append(to_pixel_box([_integer(n) for n in numbers], width, height, scale))
    return boxes


def _integer(number: str) -> int:
    # Absurdly long digit strings stay out of range without costing a huge conversion.
    if len(number) > 15:
        return -(10**15) if number.startswith("-") else 10**15
    return round(float(number))


@dataclass
class _Anchor:
    """One name in the answer: [start, end) covers the name and its boxes."""

    start: int
    end: int
    name: str
    boxes: list[ParsedBox]


def _untagged_start(answer: str, lo: int, hi: int, index: dict[str, tuple[Kind, str]]) -> int:
    """Where the untagged name ending at `hi` starts (not before the previous anchor's end)."""
    span = answer[lo:hi]
    cut = max(span.rfind(c) for c in _DELIMITERS)
    start = lo + cut + 1
    # After a colon (or a comma inside a description) a description may run straight into the
    # next name when the model left out the full stop: take the longest known name at the end.
    # After a sentence end, at the start of the text, or in a list of names, keep it all.
    if cut < 0:
        in_description = lo > 0
    else:
        in_description = span[cut] in _COLONS or (
            span[cut] in _COMMAS and _SEPARATORS.fullmatch(span[:cut]) is None
        )
    name = answer[start:hi]
    if not in_description or _lookup(name, index)[0] != "unknown":
        return start
    # No name is longer than the longest key (give room for doubled spaces): stay linear.
    longest = 2 * max(map(len, index), default=0)
    for i in range(max(1, len(name) - longest), len(name)):
        prev, here = name[i - 1], name[i]
        boundary = prev.isspace() or bool(_CJK.match(prev)) or bool(_CJK.match(here))
        if boundary and not here.isspace() and _lookup(name[i:], index)[0] != "unknown":
            return start + i
    return start


def _anchors(
    answer: str, width: int, height: int, scale: int, index: dict[str, tuple[Kind, str]]
) -> list[_Anchor]:
    anchors: list[_Anchor] = []
    for match in _TOKEN.finditer(answer):
        if match.group("name") is not None:
            anchors.append(_Anchor(match.start(), match.end(), match.group("name"), []))
            continue
        inner = match.group("tagged")
        boxes = _boxes(inner if inner is not None else match.group("bare"), width, height, scale)
        lo = anchors[-1].end if anchors else 0
        if anchors and _SEPARATORS.fullmatch(_TAG.sub("", answer[lo : match.start()])):
            # More boxes for the previous name (or a <ref> name's own boxes).
            anchors[-1].boxes.extend(boxes)
            anchors[-1].end = match.end()
            continue
        start = _untagged_start(answer, lo, match.start(), index)
        anchors.append(_Anchor(start, match.end(), answer[start : match.start()], boxes))
    return anchors


def _description(text: str) -> str:
    return _TAG.sub("", text).lstrip(_DESCRIPTION_LEAD).rstrip().rstrip(_COMMAS).rstrip()


def parse_grounded(
    answer: str,
    width: int,
    height: int,
    *,
    scale: int = DEFAULT_SCALE,
    vocab: Vocab | None = None,
) -> GroundedAnswer:
    """Split a MedRegA answer into name groups with boxes in source pixels and descriptions."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    index = _index(vocab if vocab is not None else load_vocab())

    def grounded(anchor: _Anchor) -> GroundedName:
        text = _clean(anchor.name)
        kind, code = _lookup(text, index)
        return GroundedName(text, kind, code, tuple(anchor.boxes))

    anchors = _anchors(answer, width, height, scale, index)
    segments: list[GroundedSegment] = []
    lead = _description(answer[: anchors[0].start if anchors else len(answer)]).rstrip(_COLONS)
    if lead:
        segments.append(GroundedSegment((), lead))
    i = 0
    while i < len(anchors):
        group = [anchors[i]]
        # Names joined by a comma form one group; anything else starts the next one.
        while i + 1 < len(anchors) and _NAME_JOIN.fullmatch(
            _TAG.sub("", answer[anchors[i].end : anchors[i + 1].start])
        ):
            i += 1
            group.append(anchors[i])
        end = anchors[i + 1].start if i + 1 < len(anchors) else len(answer)
        text = _description(answer[anchors[i].end : end])
        segments.append(GroundedSegment(tuple(grounded(a) for a in group), text))
        i += 1

    prose = " ".join(s.text for s in segments)
    names = " ".join(n.text for s in segments for n in s.names)
    language = detect_language(prose if prose.strip() else names)
    return GroundedAnswer(tuple(segments), language, answer)


def parse_name_answer(answer: str, vocab: Vocab | None = None) -> GroundedName:
    """The name in a Region→Text (identify) answer: "right mandible", "左肺。", "It is the …"."""
    index = _index(vocab if vocab is not None else load_vocab())
    ref = re.search(_REF, answer)
    if ref is not None:
        text = _clean(ref.group("name"))
    else:
        bare = _clean(_BOX_ONLY.sub(" ", answer))
        first = next((s for s in _SENTENCE_END.split(bare) if s.strip()), "")
        text = _clean(first).strip(_COMMAS + _COLONS)
        if _lookup(text, index)[0] == "unknown":
            text = _clean(_ANSWER_FRAME.sub("", text, count=1)) or text
    kind, code = _lookup(text, index)
    return GroundedName(text, kind, code, ())


def format_grounded(
    groups: Sequence[tuple[Sequence[tuple[str, Sequence[PixelBox]]], str]],
    width: int,
    height: int,
    *,
    scale: int = DEFAULT_SCALE,
    language: Language = "en",
    tagged: bool = True,
) -> str:
    """Write groups of (name, boxes) with descriptions the way MedRegA does."""
    comma, colon, joiner = (", ", ": ", " ") if language == "en" else ("，", "：", "")
    parts = []
    for names, description in groups:
        items = []
        for name, boxes in names:
            coords = ", ".join(
                "[" + ", ".join(map(str, to_text_box(b, width, height, scale))) + "]" for b in boxes
            )
            box_text = f"[{coords}]" if boxes else ""
            if tagged:
                items.append(f"<ref>{name}</ref>" + (f"<box>{box_text}</box>" if boxes else ""))
            else:
                items.append(name + box_text)
        head, text = comma.join(items), description.strip()
        part = f"{head}{colon}{text}" if head and text else head or text
        if part:
            parts.append(part)
    return joiner.join(parts)


@dataclass(frozen=True)
class PlainReport:
    """A report-generation answer: "Findings: … Impression: …" / "影像诊断：… 影像结论：…"."""

    findings: str
    impression: str
    language: Language
    raw: str


_FINDINGS_HEADS = ("findings", "finding", "影像诊断", "影像所见", "检查所见")
_IMPRESSION_HEADS = ("impressions", "impression", "影像结论", "诊断意见", "结论")
_SECTION_HEAD = re.compile(
    r"(?:^|(?<=[\s.。;；]))(" + "|".join(_FINDINGS_HEADS + _IMPRESSION_HEADS) + r")\s*[:：]",
    re.IGNORECASE,
)


def parse_plain_report(answer: str) -> PlainReport:
    """Split a plain report into its findings and impression (text before any heading, or
    without headings at all, counts as findings). Never raises on model output."""
    text = _TAG.sub("", answer).strip()
    parts: dict[str, list[str]] = {"findings": [], "impression": []}
    heads = list(_SECTION_HEAD.finditer(text))
    lead = text[: heads[0].start() if heads else len(text)].strip()
    if lead:
        parts["findings"].append(lead)
    for i, head in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        body = text[head.end() : end].strip()
        section = "impression" if head.group(1).lower() in _IMPRESSION_HEADS else "findings"
        if body:
            parts[section].append(body)
    findings, impression = (" ".join(parts[k]).strip() for k in ("findings", "impression"))
    return PlainReport(findings, impression, detect_language(text), answer)
