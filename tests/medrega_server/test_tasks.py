"""The three MedRegA tasks on a phantom chest X-ray, against the `onnx` backend's answers for
the same DICOM: same regions, same lesions, same boxes (within 2 px + one grid step), same
vocabulary wording."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from shared.reports.domain import DraftResult, PixelBox
from shared.inference.grounded_text import parse_grounded, parse_name_answer, to_text_box
from shared.inference.medrega_prompts import identify_prompt, locate_prompt, report_prompt
from shared.inference.onnx_backend import OnnxBackend
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


@pytest.mark.parametrize("language", ["en", "zh"])
def test_report_matches_the_onnx_backend(
    client: TestClient, xray: PhantomXray, reference_draft: DraftResult, language: str
) -> None:
    text = ask(
        client,
        report_prompt("DX", language),  # type: ignore[arg-type]
        xray.data_url,
        pixel_spacing_mm=list(xray.pixel_spacing_mm),
    )
    found = groups(xray, text)
    assert [f.finding_code or f.region_code for f in reference_draft.findings] == [
        code for _, code, _, _ in found
    ]
    assert any(f.finding_code for f in reference_draft.findings), "the phantom has a finding"
    for (_, _, box, sentence), want in zip(found, reference_draft.findings, strict=True):
        assert want.box is not None
        assert_close(xray, box, want.box)
        assert sentence == (want.sentence_en if language == "en" else want.sentence_zh)
    if language == "en":
        assert ": " in text and "：" not in text
    else:
        assert "：" in text and ". <ref>" not in text


def test_report_without_pixel_spacing_states_no_size(
    client: TestClient, xray: PhantomXray, reference_draft: DraftResult
) -> None:
    """A PNG has no pixel spacing: lesions get the vocabulary's size-free wording."""
    found = groups(xray, ask(client, report_prompt("DX", "en"), xray.data_url))
    vocab = load_vocab()
    for (_, _, _, sentence), want in zip(found, reference_draft.findings, strict=True):
        if want.finding_code is None:
            assert sentence == want.sentence_en
        else:
            info = vocab.finding(want.finding_code)
            assert sentence == info.impression("en", want.region_name_en)
            assert " mm" not in sentence


def test_report_about_one_finding(
    client: TestClient, xray: PhantomXray, reference_draft: DraftResult
) -> None:
    lesion = next(f for f in reference_draft.findings if f.finding_code)
    assert lesion.finding_name_en and lesion.finding_name_zh and lesion.box
    prompt = f"Please locate and describe the <ref>{lesion.finding_name_en}</ref> in this image."
    ((name, code, box, _),) = groups(xray, ask(client, prompt, xray.data_url))
    assert (name, code) == (lesion.finding_name_en, lesion.finding_code)
    assert_close(xray, box, lesion.box)

    absent = next(
        f
        for f in load_vocab().findings_for("cxr")
        if f.code not in {r.finding_code for r in reference_draft.findings}
    )
    prompt = f"请定位并描述这张胸部X光片中的<ref>{absent.zh}</ref>"
    assert ask(client, prompt, xray.data_url) == f"此图像中未见{absent.zh}。"


@pytest.mark.parametrize(("language", "name"), [("en", "right lung"), ("zh", "右肺")])
def test_locate_answers_the_model_box(
    client: TestClient, backend: OnnxBackend, xray: PhantomXray, language: str, name: str
) -> None:
    text = ask(client, locate_prompt(name, "DX", language), xray.data_url)  # type: ignore[arg-type]
    ((answered_name, code, box, sentence),) = groups(xray, text)
    assert (answered_name, code, sentence) == (name, "right_lung", "")
    assert re.fullmatch(rf"<ref>{name}</ref><box>\[\[\d+, \d+, \d+, \d+\]\]</box>", text)
    want = backend.locate(xray.instance, 1, name)
    assert want.region_code == "right_lung" and want.boxes
    assert_close(xray, box, want.boxes[0])


@pytest.mark.parametrize(
    ("language", "name", "answer"),
    [
        ("en", "right lung field", None),  # a synonym
        ("en", "unicorn horn", "The unicorn horn cannot be located in this image."),
        ("zh", "独角兽", "无法在此图像中定位独角兽。"),
        ("en", "spleen", "The spleen cannot be located in this image."),  # not on a chest X-ray
    ],
)
def test_locate_by_synonym_or_not_at_all(
    client: TestClient, xray: PhantomXray, language: str, name: str, answer: str | None
) -> None:
    text = ask(client, locate_prompt(name, "DX", language), xray.data_url)  # type: ignore[arg-type]
    if answer is None:
        assert text.startswith(f"<ref>{name}</ref><box>[[")
    else:
        assert text == answer


@pytest.mark.parametrize(("language", "answer"), [("en", "right lung"), ("zh", "右肺")])
def test_identify_names_the_region(
    client: TestClient, backend: OnnxBackend, xray: PhantomXray, language: str, answer: str
) -> None:
    (located,) = backend.locate(xray.instance, 1, "right lung").boxes
    box = to_text_box(located, xray.width, xray.height, SCALE)
    prompt = identify_prompt(box, "DX", language)  # type: ignore[arg-type]
    text = ask(client, prompt, xray.data_url)
    assert text == answer
    assert parse_name_answer(text).code == "right_lung"


def test_report_about_a_region_or_an_unknown_name(client: TestClient, xray: PhantomXray) -> None:
    prompt = "Please locate and describe the <ref>left lung field</ref> in this chest X-ray scan."
    ((name, code, _, sentence),) = groups(xray, ask(client, prompt, xray.data_url))
    assert (name, code, sentence) == ("left lung", "left_lung", "The left lung is unremarkable.")
    prompt = "Please locate and describe the <ref>dragon scale</ref> in this chest X-ray scan."
    assert ask(client, prompt, xray.data_url) == "The dragon scale cannot be located in this image."
