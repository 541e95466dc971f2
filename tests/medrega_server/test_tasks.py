"""MedRegA's tasks, in its own prompt forms, on a phantom chest X-ray, against the `onnx`
backend's answers for the same DICOM: same regions, same lesions, same boxes (within 2 px + one
grid step), same vocabulary wording. Each prompt is written by `medrega_prompts` and each answer
read by the `mllm` backend's parsers, in both languages."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from shared.inference.grounded_text import (
    parse_grounded,
    parse_name_answer,
    parse_plain_report,
    to_text_box,
)
from shared.inference.medrega_prompts import (
    detection_prompt,
    disease_prompt,
    grounding_prompt,
    recognition_prompt,
    report_generation_prompt,
)
from shared.inference.onnx_backend import OnnxBackend
from shared.reports.domain import DraftResult, Language, PixelBox, RegionFindingResult
from shared.vocab import load_vocab
from tests.medrega_server.conftest import PhantomXray, ask

SCALE = 999


def groups(xray: PhantomXray, text: str) -> list[tuple[str, str, PixelBox, str]]:
    """(name, vocabulary code, pixel box, sentence) per group, read with our `mllm` parser;
    every name must be a vocabulary name with exactly one usable box."""
    parsed = parse_grounded(text, xray.width, xray.height, scale=SCALE)
    found = []
    for segment in parsed.segments:
        (name,) = segment.names
        (box,) = name.boxes
        assert name.code is not None, name
        assert box.flag is None and box.pixel is not None, box
        found.append((name.text, name.code, box.pixel, segment.text))
    assert text.count("<ref>") == text.count("</box>") == len(found), text  # tagged output
    return found


def assert_close(xray: PhantomXray, got: PixelBox, want: PixelBox) -> None:
    tolerance_x = 2 + xray.width / SCALE
    tolerance_y = 2 + xray.height / SCALE
    for g, w, tolerance in zip(
        (got.x1, got.y1, got.x2, got.y2),
        (want.x1, want.y1, want.x2, want.y2),
        (tolerance_x, tolerance_y, tolerance_x, tolerance_y),
        strict=True,
    ):
        assert abs(g - w) <= tolerance, (got, want)


EVERY_STRUCTURE = (
    "Please locate the region and describe the condition of each structure within the {scan}."
)


def _lang(language: str) -> Language:
    return "zh" if language == "zh" else "en"


def _sentence(want: RegionFindingResult, language: Language) -> str:
    return want.sentence_en if language == "en" else want.sentence_zh


@pytest.mark.parametrize("language", ["en", "zh"])
def test_phrase_grounding_of_every_region_group_matches_the_onnx_backend(
    client: TestClient, xray: PhantomXray, reference_draft: DraftResult, language: str
) -> None:
    """The backend's requests for a chest X-ray: one per vocabulary group, organs named."""
    lang = _lang(language)
    vocab = load_vocab()
    answered: dict[str, tuple[str, PixelBox, str]] = {}
    for group in vocab.domain("cxr").grounding_groups:
        names = [vocab.region(code).name(lang) for code in group]
        text = ask(
            client,
            grounding_prompt(names, "DX", lang),
            xray.data_url,
            pixel_spacing_mm=list(xray.pixel_spacing_mm),
        )
        for name, code, box, sentence in groups(xray, text):
            assert name in names  # echoed as asked
            answered[code] = (name, box, sentence)
    lesions = {f.region_code: f for f in reference_draft.findings if f.finding_code}
    assert lesions, "the phantom has a finding"
    assert set(answered) == {f.region_code for f in reference_draft.findings}
    for want in reference_draft.findings:
        _, box, sentence = answered[want.region_code]
        assert sentence == _sentence(want, lang)
        if want.finding_code is None:
            assert want.box is not None
            assert_close(xray, box, want.box)  # a lesion's region keeps its region box
    if lang == "en":
        assert all("：" not in s for _, _, s in answered.values())


@pytest.mark.parametrize("language", ["en", "zh"])
def test_disease_localisation_boxes_the_lesion_or_says_it_is_not_seen(
    client: TestClient, xray: PhantomXray, reference_draft: DraftResult, language: str
) -> None:
    lang = _lang(language)
    vocab = load_vocab()
    lesion = next(f for f in reference_draft.findings if f.finding_code)
    assert lesion.finding_code and lesion.box
    name = vocab.finding(lesion.finding_code).name(lang)
    text = ask(
        client,
        disease_prompt(name, "DX", lang),
        xray.data_url,
        pixel_spacing_mm=list(xray.pixel_spacing_mm),
    )
    ((answered, code, box, sentence),) = groups(xray, text)
    assert (answered, code, sentence) == (name, lesion.finding_code, _sentence(lesion, lang))
    assert_close(xray, box, lesion.box)
    assert text.count("：" if lang == "zh" else ": ") == 1

    absent = next(
        f
        for f in vocab.findings_for("cxr")
        if f.code not in {r.finding_code for r in reference_draft.findings}
    )
    not_seen = {"en": f"No {absent.en} is seen in this image.", "zh": f"此图像中未见{absent.zh}。"}
    assert (
        ask(client, disease_prompt(absent.name(lang), "DX", lang), xray.data_url)
        == (not_seen[lang])
    )
    # Other names of the lesion (MedRegA's lesion names are synonyms) are understood, and the
    # answer echoes the name as asked.
    synonyms = vocab.finding(lesion.finding_code).synonyms_en if lang == "en" else ()
    for synonym in synonyms or vocab.finding(lesion.finding_code).synonyms_zh:
        text = ask(client, disease_prompt(synonym, "DX", lang), xray.data_url)
        ((answered, code, box, _),) = groups(xray, text)
        assert (answered, code) == (synonym, lesion.finding_code)


@pytest.mark.parametrize("language", ["en", "zh"])
def test_report_generation_is_the_onnx_report_without_boxes(
    client: TestClient, xray: PhantomXray, reference_draft: DraftResult, language: str
) -> None:
    lang = _lang(language)
    text = ask(
        client,
        report_generation_prompt("DX", lang),
        xray.data_url,
        pixel_spacing_mm=list(xray.pixel_spacing_mm),
    )
    assert "<box>" not in text and "[[" not in text
    assert text.startswith("Findings: " if lang == "en" else "影像诊断：")
    plain = parse_plain_report(text)
    joiner = " " if lang == "en" else ""
    assert plain.language == lang
    assert plain.findings == joiner.join(_sentence(f, lang) for f in reference_draft.findings)
    impressions = [s for s in reference_draft.sentences if s.section == "impression"]
    assert plain.impression == joiner.join(getattr(s, lang) for s in impressions)


def test_phrase_grounding_of_every_structure_is_the_onnx_report(
    client: TestClient, xray: PhantomXray, reference_draft: DraftResult
) -> None:
    """Without organs named: every finding result, lesions on their own boxes."""
    prompt = EVERY_STRUCTURE.format(scan="chest x-ray image")
    found = groups(
        xray, ask(client, prompt, xray.data_url, pixel_spacing_mm=list(xray.pixel_spacing_mm))
    )
    assert [f.finding_code or f.region_code for f in reference_draft.findings] == [
        code for _, code, _, _ in found
    ]
    for (_, _, box, sentence), want in zip(found, reference_draft.findings, strict=True):
        assert want.box is not None
        assert_close(xray, box, want.box)
        assert sentence == want.sentence_en


def test_without_pixel_spacing_no_size_is_stated(
    client: TestClient, xray: PhantomXray, reference_draft: DraftResult
) -> None:
    """A PNG has no pixel spacing: lesions get the vocabulary's size-free wording."""
    vocab = load_vocab()
    lesion = next(f for f in reference_draft.findings if f.finding_code)
    assert lesion.finding_code is not None
    info = vocab.finding(lesion.finding_code)
    text = ask(client, disease_prompt(info.en, "DX", "en"), xray.data_url)
    ((_, _, _, sentence),) = groups(xray, text)
    assert sentence == info.impression("en", vocab.region(lesion.region_code))
    assert " mm" not in sentence


@pytest.mark.parametrize(("language", "name"), [("en", "right lung"), ("zh", "右肺")])
def test_detection_answers_the_model_box(
    client: TestClient, backend: OnnxBackend, xray: PhantomXray, language: str, name: str
) -> None:
    text = ask(client, detection_prompt([name], "DX", _lang(language)), xray.data_url)
    ((answered_name, code, box, sentence),) = groups(xray, text)
    assert (answered_name, code, sentence) == (name, "right_lung", "")
    assert re.fullmatch(rf"<ref>{name}</ref><box>\[\[\d+, \d+, \d+, \d+\]\]</box>", text)
    want = backend.locate(xray.instance, 1, name)
    assert want.region_code == "right_lung" and want.boxes
    assert_close(xray, box, want.boxes[0])


def test_detection_of_several_names_and_of_a_lesion(
    client: TestClient, xray: PhantomXray, reference_draft: DraftResult
) -> None:
    text = ask(client, detection_prompt(["right lung", "left lung"], "DX", "en"), xray.data_url)
    parsed = parse_grounded(text, xray.width, xray.height, scale=SCALE)
    ((right, left),) = [s.names for s in parsed.segments]
    assert (right.code, left.code) == ("right_lung", "left_lung")
    assert len(right.boxes) == len(left.boxes) == 1
    lesion = next(f for f in reference_draft.findings if f.finding_code)
    assert lesion.finding_name_en and lesion.box
    text = ask(client, detection_prompt([lesion.finding_name_en], "DX", "en"), xray.data_url)
    ((name, code, box, _),) = groups(xray, text)
    assert (name, code) == (lesion.finding_name_en, lesion.finding_code)
    assert_close(xray, box, lesion.box)


@pytest.mark.parametrize(
    ("language", "name", "answer"),
    [
        ("en", "right lung field", None),  # a synonym
        ("en", "unicorn horn", "The unicorn horn cannot be located in this image."),
        ("zh", "独角兽", "无法在此图像中定位独角兽。"),
        ("en", "spleen", "The spleen cannot be located in this image."),  # not on a chest X-ray
    ],
)
def test_detection_by_synonym_or_not_at_all(
    client: TestClient, xray: PhantomXray, language: str, name: str, answer: str | None
) -> None:
    text = ask(client, detection_prompt([name], "DX", _lang(language)), xray.data_url)
    if answer is None:
        assert text.startswith(f"<ref>{name}</ref><box>[[")
    else:
        assert text == answer


@pytest.mark.parametrize(("language", "answer"), [("en", "right lung"), ("zh", "右肺")])
def test_recognition_names_the_region(
    client: TestClient, backend: OnnxBackend, xray: PhantomXray, language: str, answer: str
) -> None:
    (located,) = backend.locate(xray.instance, 1, "right lung").boxes
    box = to_text_box(located, xray.width, xray.height, SCALE)
    text = ask(client, recognition_prompt(box, "DX", _lang(language)), xray.data_url)
    assert text == answer
    assert parse_name_answer(text).code == "right_lung"


def test_grounding_leaves_out_organs_it_cannot_find(client: TestClient, xray: PhantomXray) -> None:
    text = ask(client, grounding_prompt(["left lung field", "spleen"], "DX", "en"), xray.data_url)
    ((name, code, _, sentence),) = groups(xray, text)
    assert (name, code, sentence) == (
        "left lung field",
        "left_lung",
        "The left lung is unremarkable.",
    )
    text = ask(client, grounding_prompt(["dragon scale"], "DX", "en"), xray.data_url)
    assert text == "The dragon scale cannot be located in this image."
