"""MedRegA's prompt forms (REFERENCE.md, from MedRegA's published demo data): written verbatim by
our writers, and every form read back to its task, names, box and scan phrase."""

from __future__ import annotations

import pytest

from shared.inference.grounded_text import normalise_name, parse_plain_report
from shared.inference.medrega_prompts import (
    PromptTask,
    UnknownPrompt,
    classify_prompt,
    detection_prompt,
    disease_prompt,
    grounding_prompt,
    recognition_prompt,
    report_generation_prompt,
)
from shared.inference.text_mentions import affirmed_in_domain
from shared.vocab import load_vocab

BOX = (
    "The region is represented in the form of bounding box, [x1, y1, x2, y2], with integers "
    "ranging from 0 to 999. These values correspond to the top left x, top left y, bottom right "
    "x, and bottom right y."
)
FMT = (
    "For each object, please utilize this format to represent the region with its bounding box: "
    '"<ref>object</ref><box>[[x1, y1, x2, y2]]</box>".'
)
# The published forms, character for character.
DETECTION = (
    "You are a helpful medical assistant. Your task is object detection. You are required to "
    f"find all the regions of the given objects. {BOX} {FMT} <image>\n"
    "Please locate <ref>carotid vessel wall</ref> in this MRI scan."
)
RECOGNITION = (
    "You are a helpful medical assistant. Your task is object recognition. You are required to "
    f"recognize the object in the given region. {BOX} <image>\n"
    "What is <ref>this</ref><box>[[421, 351, 505, 470]]</box> in this CT scan?"
)
GROUNDING = (
    "You are a helpful medical assistant. Your task is report phrase grounding. You are given a "
    "chest x-ray image, and you are required to locate the region and generate a report for the "
    f"given organ. {BOX} {FMT} <image>\n"
    "Please locate the region and describe the condition of <ref>right lung</ref>, "
    "<ref>left lung</ref>"
)
DISEASE_ZH = (
    "你是一个医疗助手，你的任务是定位并描述病种。病种区域用边界框的形式表示，[x1, y1, x2, y2]，"
    "整数范围从0到999。这些值分别对应左上角的x，左上角的y，右下角的x和右下角的y。对于每个病种，"
    '请使用这种格式用边界框表示区域："<ref>病种</ref><box>[[x1, y1, x2, y2]]</box>：诊断"。'
    "<image>\n请定位并描述这张医学影像中的<ref>胰腺癌</ref>"
)
REPORT_EN = (
    "You are a helpful medical assistant. Your task is report generation. You are given a chest "
    "x-ray image, and you are required to generate a medical report consisting of findings and "
    "impressions based on the image. <image>\n"
)
REPORT_ZH = (
    "你是一个医疗助手，你的任务是生成诊断报告。请为这张医学影像撰写诊断报告，需包括影像诊断和影像"
    "结论两部分。影像诊断描述可见信息，影响结论列举最终的诊断结果。<image>\n"
)


def test_writers_reproduce_the_published_forms() -> None:
    assert detection_prompt(["carotid vessel wall"], "MR", "en") == DETECTION
    assert recognition_prompt((421, 351, 505, 470), "CT", "en") == RECOGNITION
    assert grounding_prompt(["right lung", "left lung"], "DX", "en") == GROUNDING
    assert disease_prompt("胰腺癌", "CT", "zh") == DISEASE_ZH
    assert report_generation_prompt("DX", "en") == REPORT_EN
    assert report_generation_prompt("CT", "zh") == REPORT_ZH


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (DETECTION, PromptTask("locate", "en", ("carotid vessel wall",), None, "MRI scan", True)),
        (
            RECOGNITION,
            PromptTask("identify", "en", (), (421, 351, 505, 470), "CT scan", True),
        ),
        (
            GROUNDING,
            PromptTask(
                "grounding", "en", ("right lung", "left lung"), None, "chest x-ray image", True
            ),
        ),
        (DISEASE_ZH, PromptTask("disease", "zh", ("胰腺癌",), None, "医学影像", True)),
        (REPORT_EN, PromptTask("report_generation", "en", (), None, "chest x-ray image", True)),
        (REPORT_ZH, PromptTask("report_generation", "zh", (), None, "医学影像", True)),
    ],
)
def test_every_published_form_reads_back(prompt: str, expected: PromptTask) -> None:
    assert classify_prompt(prompt) == expected


@pytest.mark.parametrize("language", ["en", "zh"])
def test_our_forms_read_back_in_both_languages(language: str) -> None:
    lang = "en" if language == "en" else "zh"
    names = ("right lung", "left lung") if lang == "en" else ("右肺", "左肺")
    lesion = "pleural effusion" if lang == "en" else "胸腔积液"
    cases = [
        (detection_prompt(names, "DX", lang), "locate", names, None),
        (recognition_prompt((10, 20, 300, 400), "DX", lang), "identify", (), (10, 20, 300, 400)),
        (grounding_prompt(names, "DX", lang), "grounding", names, None),
        (disease_prompt(lesion, "DX", lang), "disease", (lesion,), None),
        (report_generation_prompt("DX", lang), "report_generation", (), None),
    ]
    for prompt, task, wanted, box in cases:
        read = classify_prompt(prompt)
        assert (read.task, read.language, read.names, read.box) == (task, lang, wanted, box)
        assert read.preamble
        # The preamble's format example never becomes the question's structure.
        assert not {"object", "目标", "器官", "病种", "disease"} & set(read.names)


def test_the_image_placeholder_may_be_lmdeploys_or_missing() -> None:
    lmdeploy = detection_prompt(["liver"], "CT", "en", placeholder="<IMAGE_TOKEN>")
    assert "<IMAGE_TOKEN>\nPlease locate" in lmdeploy
    assert classify_prompt(lmdeploy).names == ("liver",)
    # A client that sends the image as its own part and drops the placeholder: the preamble
    # still names the task and its format example is still not the question.
    bare = detection_prompt(["liver"], "CT", "en", placeholder="")
    read = classify_prompt(bare)
    assert (read.task, read.names, read.scan) == ("locate", ("liver",), "CT scan")


def test_box_sentences_follow_the_grid() -> None:
    prompt = detection_prompt(["liver"], "CT", "en", scale=1000)
    assert "integers ranging from 0 to 1000" in prompt
    assert "整数范围从0到1000" in detection_prompt(["肝脏"], "CT", "zh", scale=1000)


def test_questions_without_a_preamble() -> None:
    vocab = load_vocab()

    def kind(name: str) -> str:
        return normalise_name(name, vocab)[0]

    read = classify_prompt("Please locate <ref>right lung</ref>, <ref>left lung</ref> here.", kind)
    assert (read.task, read.names) == ("locate", ("right lung", "left lung"))
    read = classify_prompt("请定位并描述这张医学影像中的<ref>胰腺癌</ref>", kind)
    assert (read.task, read.names, read.scan) == ("disease", ("胰腺癌",), "医学影像")
    read = classify_prompt("Please locate and describe <ref>left lung</ref> in this CT scan.", kind)
    assert (read.task, read.scan) == ("grounding", "CT scan")
    read = classify_prompt("What is <ref>this</ref><box>[[1, 2, 30, 40]]</box>?")
    assert (read.task, read.box) == ("identify", (1, 2, 30, 40))
    read = classify_prompt("Please write a radiology report for this image.")
    assert read.task == "report_generation"


@pytest.mark.parametrize(
    "prompt",
    [
        "Tell me a joke.",
        "You are a helpful medical assistant. Your task is object detection. <image>\nHello?",
        "You are a helpful medical assistant. Your task is object recognition. <image>\nWhat?",
        "",
    ],
)
def test_unknown_or_incomplete_prompts_are_refused(prompt: str) -> None:
    with pytest.raises(UnknownPrompt):
        classify_prompt(prompt)


def test_plain_reports_split_into_findings_and_impression() -> None:
    report = parse_plain_report(
        "Findings: Continued enlargement of the cardiac silhouette. Impression: Cardiomegaly."
    )
    assert (report.findings, report.impression, report.language) == (
        "Continued enlargement of the cardiac silhouette.",
        "Cardiomegaly.",
        "en",
    )
    report = parse_plain_report("影像诊断：右肺见结节影。影像结论：右肺结节，建议CT随访。")
    assert (report.findings, report.impression, report.language) == (
        "右肺见结节影。",
        "右肺结节，建议CT随访。",
        "zh",
    )
    no_headings = parse_plain_report("No acute cardiopulmonary process.")
    assert (no_headings.findings, no_headings.impression) == (
        "No acute cardiopulmonary process.",
        "",
    )
    assert parse_plain_report("").findings == ""


def test_what_a_plain_report_affirms() -> None:
    vocab = load_vocab()
    text = "No focal consolidation, pleural effusion, or pneumothorax is seen. Cardiomegaly."
    assert affirmed_in_domain(text, "en", "cxr", vocab) == ["cardiomegaly"]
    # A term several findings share counts only for the region its clause names.
    assert affirmed_in_domain("肝脏占位性病变，建议进一步检查。", "zh", "abd_ct", vocab) == [
        "liver_lesion"
    ]
    assert affirmed_in_domain("A mass is seen in the pancreas.", "en", "abd_ct", vocab) == [
        "pancreatic_mass"
    ]
    assert affirmed_in_domain("There is a mass.", "en", "abd_ct", vocab) == []
