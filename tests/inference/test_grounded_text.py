"""MedRegA's grounded text: real answers in every variant the model writes, coordinate mapping,
flags for unusable boxes, vocabulary normalisation, and format → parse round trips."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.inference.grounded_text import (
    DEFAULT_SCALE,
    GroundedAnswer,
    detect_language,
    format_grounded,
    normalise_name,
    parse_grounded,
    parse_name_answer,
    to_pixel_box,
    to_text_box,
)
from shared.reports.domain import PixelBox
from shared.vocab import load_vocab

VOCAB = load_vocab()
W, H = 2000, 2500  # non-square on purpose: x scales by width, y by height

LOCATE = "<ref>carotid vessel wall</ref><box>[[365, 293, 416, 598], [596, 316, 635, 464]]</box>"
REPORT = (
    "<ref>right lung</ref><box>[[102, 106, 481, 910]]</box>, <ref>left lung</ref>"
    "<box>[[535, 128, 923, 889]]</box>: No focal consolidation, pleural effusion, or "
    "pneumothorax is seen. <ref>cardiac silhouette</ref><box>[[300, 400, 700, 800]]</box>: "
    "The heart size is normal."
)
CHINESE = (
    "<ref>左肾</ref><box>[[661, 528, 743, 599]]</box>：左肾见一稍低密度肿块，边界不清。"
    "<ref>胰腺</ref><box>[[400, 500, 600, 560]]</box>：未见异常。"
)

# (answer, [(description, [(name, kind, code, [raw boxes])])])
CASES = {
    "locate": (
        LOCATE,
        [
            (
                "",
                [
                    (
                        "carotid vessel wall",
                        "unknown",
                        None,
                        [(365, 293, 416, 598), (596, 316, 635, 464)],
                    )
                ],
            )
        ],
    ),
    "report": (
        REPORT,
        [
            (
                "No focal consolidation, pleural effusion, or pneumothorax is seen.",
                [
                    ("right lung", "region", "right_lung", [(102, 106, 481, 910)]),
                    ("left lung", "region", "left_lung", [(535, 128, 923, 889)]),
                ],
            ),
            (
                "The heart size is normal.",
                [("cardiac silhouette", "region", "cardiac_silhouette", [(300, 400, 700, 800)])],
            ),
        ],
    ),
    "chinese": (
        CHINESE,
        [
            (
                "左肾见一稍低密度肿块，边界不清。",
                [("左肾", "region", "left_kidney", [(661, 528, 743, 599)])],
            ),
            ("未见异常。", [("胰腺", "region", "pancreas", [(400, 500, 600, 560)])]),
        ],
    ),
}


def _untagged(answer: str) -> str:
    return re.sub(r"</?(?:ref|box)>", "", answer)


def _triple(answer: str) -> str:
    return _untagged(answer).replace("[[", "[[[").replace("]]", "]]]")


def _full_width(answer: str) -> str:
    return answer.replace("</box>, ", "</box>，").replace("</box>: ", "</box>：")


VARIANTS = {"tagged": str, "untagged": _untagged, "triple": _triple, "full_width": _full_width}


def _pixels(raw: tuple[int, ...], scale: int = DEFAULT_SCALE) -> tuple[float, ...]:
    x1, y1, x2, y2 = raw
    return (x1 / scale * W, y1 / scale * H, x2 / scale * W, y2 / scale * H)


def _all_boxes(parsed: GroundedAnswer):
    return [b for s in parsed.segments for n in s.names for b in n.boxes]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES)
def test_real_answers_in_every_variant(case: str, variant: str) -> None:
    answer, expected = CASES[case]
    parsed = parse_grounded(VARIANTS[variant](answer), W, H, vocab=VOCAB)
    assert len(parsed.segments) == len(expected)
    for segment, (description, names) in zip(parsed.segments, expected, strict=True):
        assert segment.text == description
        assert len(segment.names) == len(names)
        for name, (text, kind, code, raws) in zip(segment.names, names, strict=True):
            assert (name.text, name.kind, name.code) == (text, kind, code)
            assert [b.raw for b in name.boxes] == raws
            assert all(b.flag is None for b in name.boxes)
            for box, raw in zip(name.boxes, raws, strict=True):
                assert box.pixel is not None
                got = (box.pixel.x1, box.pixel.y1, box.pixel.x2, box.pixel.y2)
                assert got == pytest.approx(_pixels(raw))
    assert parsed.language == ("zh" if case == "chinese" else "en")


def test_report_pixels_and_exact_reformatting() -> None:
    parsed = parse_grounded(REPORT, W, H, vocab=VOCAB)
    right = parsed.segments[0].names[0].boxes[0].pixel
    assert right == PixelBox(102 / 999 * 2000, 106 / 999 * 2500, 481 / 999 * 2000, 910 / 999 * 2500)
    groups = [
        ([(n.text, [b.pixel for b in n.boxes if b.pixel]) for n in s.names], s.text)
        for s in parsed.segments
    ]
    assert format_grounded(groups, W, H) == REPORT
    assert format_grounded(groups, W, H, tagged=False) == _untagged(REPORT)
    assert format_grounded(groups[:1], W, H, tagged=False, language="zh") == (
        "right lung[[102, 106, 481, 910]]，left lung[[535, 128, 923, 889]]："
        "No focal consolidation, pleural effusion, or pneumothorax is seen."
    )
    locate = parse_grounded(LOCATE, W, H, vocab=VOCAB).segments[0]
    name = locate.names[0]
    assert (
        format_grounded([([(name.text, [b.pixel for b in name.boxes if b.pixel])], "")], W, H)
        == LOCATE
    )


def test_chinese_groups_join_without_space() -> None:
    groups = [
        ([("左肾", [PixelBox(0, 0, W, H)])], "甲。"),
        ([("胰腺", [PixelBox(0, 0, W / 2, H / 2)])], "乙。"),
    ]
    assert format_grounded(groups, W, H, language="zh") == (
        "<ref>左肾</ref><box>[[0, 0, 999, 999]]</box>：甲。<ref>胰腺</ref><box>[[0, 0, 500, 500]]</box>：乙。"
    )


def test_untagged_names_after_a_sentence_and_without_a_full_stop() -> None:
    answer = (
        "right lung[[102, 106, 481, 910]]: Clear. cardiac silhouette[[300, 400, 700, 800]]: "
        "Normal size left hemidiaphragm[[100, 800, 400, 900]]: Sharp.\n"
        "- trachea[[450, 0, 550, 300]]"
    )
    parsed = parse_grounded(answer, W, H, vocab=VOCAB)
    assert [(s.names[0].code, s.text) for s in parsed.segments] == [
        ("right_lung", "Clear."),
        ("cardiac_silhouette", "Normal size"),
        ("left_hemidiaphragm", "Sharp."),
        ("trachea", ""),
    ]


def test_free_text_before_the_first_name_is_a_segment() -> None:
    parsed = parse_grounded("Findings:\nright lung[[1, 2, 30, 40]]: clear.", W, H, vocab=VOCAB)
    assert parsed.segments[0].names == ()
    assert parsed.segments[0].text == "Findings"
    assert parsed.segments[1].names[0].code == "right_lung"


def test_identify_answer_is_free_text_to_parse_grounded_and_a_name_to_parse_name_answer() -> None:
    parsed = parse_grounded("right mandible", W, H, vocab=VOCAB)
    assert [(s.names, s.text) for s in parsed.segments] == [((), "right mandible")]
    assert parse_grounded("", W, H, vocab=VOCAB).segments == ()


@pytest.mark.parametrize(
    "answer,text,kind,code",
    [
        ("right mandible", "right mandible", "unknown", None),
        ("左肺。", "左肺", "region", "left_lung"),
        ("It is the left lung.", "left lung", "region", "left_lung"),
        ("<ref>left lung</ref>", "left lung", "region", "left_lung"),
        ("The Right Lung", "The Right Lung", "region", "right_lung"),
        ("这是右肺。", "右肺", "region", "right_lung"),
        ("pleural effusion", "pleural effusion", "finding", "pleural_effusion"),
        ("  胸腔积液 ", "胸腔积液", "finding", "pleural_effusion"),
        ("", "", "unknown", None),
    ],
)
def test_parse_name_answer(answer: str, text: str, kind: str, code: str | None) -> None:
    name = parse_name_answer(answer, VOCAB)
    assert (name.text, name.kind, name.code, name.boxes) == (text, kind, code, ())


# --- coordinate mapping ---------------------------------------------------------------------


def test_scale_999_and_1000_map_the_last_value_to_the_far_edge() -> None:
    assert to_pixel_box([0, 0, 999, 999], W, H).pixel == PixelBox(0, 0, W, H)
    assert to_pixel_box([0, 0, 1000, 1000], W, H, scale=1000).pixel == PixelBox(0, 0, W, H)
    assert to_pixel_box([500, 500, 1000, 1000], W, H, scale=1000).pixel == PixelBox(
        1000, 1250, W, H
    )
    # Under scale 999, 1000 is out of range: clipped and flagged.
    clipped = to_pixel_box([500, 500, 1000, 1000], W, H)
    assert clipped.flag == "out_of_range" and clipped.pixel == PixelBox(
        500 / 999 * W, 500 / 999 * H, W, H
    )
    parsed = parse_grounded(
        "<ref>right lung</ref><box>[[0, 0, 500, 1000]]</box>", W, H, scale=1000, vocab=VOCAB
    )
    assert parsed.segments[0].names[0].boxes[0].pixel == PixelBox(0, 0, 1000, H)


def test_x_follows_width_and_y_follows_height() -> None:
    box = to_pixel_box([100, 100, 200, 200], 1000, 3000, scale=1000).pixel
    assert box == PixelBox(100, 300, 200, 600)
    assert to_text_box(PixelBox(100, 300, 200, 600), 1000, 3000, scale=1000) == (100, 100, 200, 200)
    assert to_text_box(PixelBox(0, 0, 1000, 3000), 1000, 3000) == (0, 0, 999, 999)
    # Clamped to the grid even for a box beyond the image.
    assert to_text_box(PixelBox(-50, -1, 5000, 9000), 1000, 3000) == (0, 0, 999, 999)


# --- flags ------------------------------------------------------------------------------------


def _only_box(answer: str):
    (box,) = _all_boxes(parse_grounded(answer, W, H, vocab=VOCAB))
    return box


def test_inverted_box_has_no_pixels() -> None:
    box = _only_box("right lung[[481, 106, 102, 910]]: x")
    assert (box.raw, box.pixel, box.flag) == ((481, 106, 102, 910), None, "inverted")
    assert _only_box("right lung[[1, 5, 2, 5]]").flag == "inverted"


def test_out_of_range_values_are_clipped() -> None:
    box = _only_box("right lung[[-20, 106, 1200, 910]]")
    assert box.raw == (-20, 106, 1200, 910) and box.flag == "out_of_range"
    assert box.pixel == PixelBox(0, 106 / 999 * H, W, 910 / 999 * H)
    collapsed = _only_box("right lung[[1100, 10, 1200, 20]]")
    assert collapsed.flag == "out_of_range" and collapsed.pixel is None
    huge = _only_box("right lung[[0, 0, 99999999999999999999999999999999, 5]]")
    assert huge.flag == "out_of_range" and huge.pixel == PixelBox(0, 0, W, 5 / 999 * H)


def test_malformed_box_has_no_pixels() -> None:
    box = _only_box("<ref>right lung</ref><box>[[102, 106, 481]]</box>: clear")
    assert (box.raw, box.pixel, box.flag) == ((102, 106, 481), None, "malformed")
    assert _only_box("right lung[[1, 2, 3, 4, 5]]").flag == "malformed"


def test_missing_box_and_unknown_name_are_kept() -> None:
    parsed = parse_grounded(
        "<ref>right lung</ref>: clear. "
        "<ref>right mandible</ref><box>[[421, 351, 505, 470]]</box>: intact.",
        W,
        H,
        vocab=VOCAB,
    )
    first, second = parsed.segments
    assert (
        first.names[0].code == "right_lung"
        and first.names[0].boxes == ()
        and first.text == "clear."
    )
    name = second.names[0]
    assert (name.text, name.kind, name.code) == ("right mandible", "unknown", None)
    assert name.boxes[0].flag is None and second.text == "intact."


# --- vocabulary -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "en,zh,kind,code",
    [
        ("right lung", "右肺", "region", "right_lung"),
        ("left kidney", "左肾", "region", "left_kidney"),
        ("cardiac silhouette", "心影", "region", "cardiac_silhouette"),
        ("pleural effusion", "胸腔积液", "finding", "pleural_effusion"),
        ("pneumothorax", "气胸", "finding", "pneumothorax"),
    ],
)
def test_chinese_and_english_names_normalise_to_the_same_code(
    en: str, zh: str, kind: str, code: str
) -> None:
    assert normalise_name(en, VOCAB) == (kind, code)
    assert normalise_name(zh, VOCAB) == (kind, code)
    assert normalise_name(f"  The  {en.upper()} ", VOCAB) == (kind, code)
    assert normalise_name(f" {zh[0]} {zh[1:]} ", VOCAB) == (kind, code)


def test_synonyms_and_clashes() -> None:
    assert normalise_name("R lung", VOCAB) == ("region", "right_lung")
    assert normalise_name("右肺野", VOCAB) == ("region", "right_lung")
    # "heart" is region heart's own name and a synonym of the cardiac silhouette: own name wins.
    assert normalise_name("heart", VOCAB) == ("region", "heart")
    assert normalise_name("carotid vessel wall", VOCAB) == ("unknown", None)


def test_detect_language() -> None:
    assert detect_language("No effusion.") == "en"
    assert detect_language("未见异常") == "zh"
    assert detect_language("") == "en"


# --- properties -----------------------------------------------------------------------------


def _finding_synonyms(finding) -> tuple[str, ...]:
    # Finding synonyms are newer than the rest of the vocabulary; older files have none.
    return (*getattr(finding, "synonyms_en", ()), *getattr(finding, "synonyms_zh", ()))


def test_finding_synonyms_normalise_to_their_finding() -> None:
    region_names = {
        n.casefold() for r in VOCAB.regions for n in (r.en, r.zh, *r.synonyms_en, *r.synonyms_zh)
    }
    for finding in VOCAB.findings:
        for synonym in _finding_synonyms(finding):
            if synonym.casefold() not in region_names:
                assert normalise_name(synonym, VOCAB) == ("finding", finding.code), synonym


def test_reference_chinese_lesion_answer() -> None:
    answer = "<ref>胰腺癌</ref><box>[[661, 528, 743, 599]]</box>：胰尾部见一稍低密度肿块，…"
    for variant in VARIANTS.values():
        parsed = parse_grounded(variant(answer), W, H, vocab=VOCAB)
        (segment,) = parsed.segments
        (name,) = segment.names
        known = "胰腺癌" in _finding_synonyms(VOCAB.finding("pancreatic_mass"))
        assert (name.text, name.kind, name.code) == (
            ("胰腺癌", "finding", "pancreatic_mass") if known else ("胰腺癌", "unknown", None)
        )
        assert [b.raw for b in name.boxes] == [(661, 528, 743, 599)]
        assert segment.text == "胰尾部见一稍低密度肿块，…" and parsed.language == "zh"


NAMES = sorted(
    {n for r in VOCAB.regions for n in (r.en, r.zh, *r.synonyms_en, *r.synonyms_zh)}
    | {n for f in VOCAB.findings for n in (f.en, f.zh, *_finding_synonyms(f))}
)
_NAME_CHARS = set("".join(NAMES).casefold())
_NAME_WORDS = {w for n in NAMES for w in n.casefold().split()} | {"the"}
# Description words and characters that can never join with a name into another name.
EN_WORDS = [
    w
    for w in ("stable", "mild", "opacity", "noted", "clear", "small", "no", "seen")
    if w not in _NAME_WORDS
]
ZH_CHARS = "".join(c for c in "见未稳定轻度密增高低清晰边界" if c not in _NAME_CHARS)


@st.composite
def _pixel_box(draw: st.DrawFn, width: int, height: int, scale: int) -> PixelBox:
    def edges(size: int) -> tuple[float, float]:
        gap = 2.5 * size / scale  # at least two grid steps, so the text box stays valid
        lo = draw(st.floats(0, size - gap))
        hi = draw(st.floats(min(lo + gap, size), size))
        return lo, hi

    x1, x2 = edges(width)
    y1, y2 = edges(height)
    return PixelBox(x1, y1, x2, y2)


@st.composite
def _description(draw: st.DrawFn, language: str) -> str:
    if language == "en":
        words = draw(st.lists(st.sampled_from(EN_WORDS), max_size=5))
        text = " ".join(words)
        stop = "."
    else:
        text = draw(st.text(alphabet=ZH_CHARS, max_size=8))
        stop = "。"
    return text + stop if text and draw(st.booleans()) else text


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_format_then_parse_round_trips(data: st.DataObject) -> None:
    width = data.draw(st.integers(50, 5000), "width")
    height = data.draw(st.integers(50, 5000), "height")
    scale = data.draw(st.sampled_from([999, 1000]), "scale")
    language = data.draw(st.sampled_from(["en", "zh"]), "language")
    tagged = data.draw(st.booleans(), "tagged")
    groups = data.draw(
        st.lists(
            st.tuples(
                st.lists(
                    st.tuples(
                        st.sampled_from(NAMES),
                        st.lists(_pixel_box(width, height, scale), min_size=1, max_size=3),
                    ),
                    min_size=1,
                    max_size=3,
                ),
                _description(language),
            ),
            min_size=1,
            max_size=3,
        ),
        "groups",
    )
    text = format_grounded(groups, width, height, scale=scale, language=language, tagged=tagged)
    parsed = parse_grounded(text, width, height, scale=scale, vocab=VOCAB)

    assert len(parsed.segments) == len(groups), text
    step_x, step_y = width / scale, height / scale
    for segment, (names, description) in zip(parsed.segments, groups, strict=True):
        assert segment.text == description, text
        assert [n.text for n in segment.names] == [name for name, _ in names], text
        for name, (written, boxes) in zip(segment.names, names, strict=True):
            assert (name.kind, name.code) == normalise_name(written, VOCAB)
            assert name.kind != "unknown"
            assert len(name.boxes) == len(boxes)
            for got, want in zip(name.boxes, boxes, strict=True):
                assert got.flag is None and got.pixel is not None
                assert (
                    abs(got.pixel.x1 - want.x1) <= step_x and abs(got.pixel.x2 - want.x2) <= step_x
                )
                assert (
                    abs(got.pixel.y1 - want.y1) <= step_y and abs(got.pixel.y2 - want.y2) <= step_y
                )
    if any(description for _, description in groups):
        assert parsed.language == language


FRAGMENTS = [
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
    "[[",
    "]]",
    "[",
    "]",
    "[[[",
    "]]]",
    ",",
    "，",
    ":",
    "：",
    ".",
    "。",
    "\n",
    " ",
    "-",
    "0",
    "7",
    "42",
    "999",
    "1000",
    "-5",
    "3.5",
    "123456789012345678901234567890",
    "right lung",
    "左肺",
    "heart",
    "the",
    "x",
]


def _check_invariants(answer: str, parsed: GroundedAnswer, width: int, height: int) -> None:
    assert parsed.raw == answer
    assert parsed.language in ("en", "zh")
    for box in _all_boxes(parsed):
        if box.pixel is not None:
            assert 0 <= box.pixel.x1 < box.pixel.x2 <= width
            assert 0 <= box.pixel.y1 < box.pixel.y2 <= height
        if box.flag in ("inverted", "malformed"):
            assert box.pixel is None


@settings(max_examples=200, deadline=None)
@given(answer=st.text(), width=st.integers(1, 5000), height=st.integers(1, 5000))
def test_parse_never_raises_on_arbitrary_text(answer: str, width: int, height: int) -> None:
    _check_invariants(answer, parse_grounded(answer, width, height, vocab=VOCAB), width, height)
    parse_name_answer(answer, VOCAB)


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.sampled_from(FRAGMENTS), max_size=40), width=st.integers(1, 5000))
def test_parse_never_raises_on_grounded_fragments(parts: list[str], width: int) -> None:
    answer = "".join(parts)
    for scale in (999, 1000):
        _check_invariants(
            answer, parse_grounded(answer, width, 777, scale=scale, vocab=VOCAB), width, 777
        )
    parse_name_answer(answer, VOCAB)
