"""MedRegA's prompts, written and read: one module for both sides of the protocol.

The `mllm` backend *writes* these prompts to a served MedRegA; our MedRegA-compatible server
*reads* them (`classify_prompt`). A MedRegA human turn is a task preamble, the image placeholder
and a newline, then the question (MedRegA's `model.chat` replaces `<image>` in place with the
image tokens). The English forms below are MedRegA's published ones (`demo_data/data_file.jsonl`
of the MedRegA repository, quoted in REFERENCE.md): object detection, object recognition, report
phrase grounding, report generation. Its published Chinese forms are disease localisation and
description and report generation; the Chinese detection, recognition and phrase-grounding
preambles and the English disease-localisation preamble are written the same way, sentence by
sentence (MedRegA's data has these tasks in both languages, but the exact wording is not public).

Boxes inside prompts are MedRegA text boxes: integers on a 0..scale grid relative to the image
width and height (see `grounded_text`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from shared.reports.domain import Language

Task = Literal["locate", "identify", "grounding", "disease", "report_generation"]

# MedRegA is InternVL-Chat-V1.2 fine-tuned with the "Hermes-2" ChatML template (`--conv_style
# "Hermes-2"` in its training script). The system message that template carried for V1.2 is
# "Answer the questions." — what lmdeploy's `internvl-zh-hermes2` template (the one it picks for
# InternVL-Chat-V1-2) still sends. Later InternVL releases changed the Hermes-2 default to a
# Chinese self-introduction; a deployment can send another (MEDREGA_MLLM_SYSTEM_PROMPT).
SYSTEM_PROMPT = "Answer the questions."

# `<image>` is where MedRegA's `model.chat` and vLLM put the image; lmdeploy's placeholder is
# `<IMAGE_TOKEN>` (MEDREGA_MLLM_IMAGE_PLACEHOLDER). Servers that know neither put it first.
IMAGE_PLACEHOLDER = "<image>"
IMAGE_PLACEHOLDERS = ("<image>", "<IMAGE_TOKEN>")

# What the question calls the image, by DICOM modality. MedRegA's English data says "chest x-ray
# image", "CT scan", "MRI scan"; its Chinese data says "医学影像" (medical image) throughout.
SCAN_EN = {"DX": "chest x-ray image", "CR": "chest x-ray image", "CT": "CT scan", "MR": "MRI scan"}
GENERIC_EN = "medical image"
SCAN_ZH = "医学影像"

_ASSISTANT_EN = "You are a helpful medical assistant."
_ASSISTANT_ZH = "你是一个医疗助手，"


def scan_phrase(modality: str | None, language: Language) -> str:
    if language == "zh":
        return SCAN_ZH
    return SCAN_EN.get(modality or "", GENERIC_EN)


def box_sentence(language: Language, scale: int = 999, subject: str = "") -> str:
    """MedRegA's sentence explaining its box format (`subject`: what the boxes hold, ZH)."""
    if language == "zh":
        return (
            f"{subject}区域用边界框的形式表示，[x1, y1, x2, y2]，整数范围从0到{scale}。"
            "这些值分别对应左上角的x，左上角的y，右下角的x和右下角的y。"
        )
    lead = f"The {subject} region" if subject else "The region"
    return (
        f"{lead} is represented in the form of bounding box, [x1, y1, x2, y2], with integers "
        f"ranging from 0 to {scale}. These values correspond to the top left x, top left y, "
        "bottom right x, and bottom right y."
    )


def format_sentence(language: Language, item: str, description: str = "") -> str:
    """MedRegA's answer-format sentence; its `<ref>item</ref>` is an example, never a target."""
    example = f"<ref>{item}</ref><box>[[x1, y1, x2, y2]]</box>"
    if language == "zh":
        tail = f"：{description}" if description else ""
        return f'对于每个{item}，请使用这种格式用边界框表示区域："{example}{tail}"。'
    tail = f": {description}" if description else ""
    return (
        f"For each {item}, please utilize this format to represent the region with its "
        f'bounding box: "{example}{tail}".'
    )


def box_text(box: tuple[int, int, int, int]) -> str:
    return "[[" + ", ".join(str(v) for v in box) + "]]"


def _refs(names: Sequence[str], language: Language) -> str:
    return ("，" if language == "zh" else ", ").join(f"<ref>{n}</ref>" for n in names)


def _turn(preamble: str, question: str, placeholder: str, language: Language) -> str:
    joiner = "" if language == "zh" else " "
    return f"{preamble}{joiner}{placeholder}\n{question}"


def detection_prompt(
    names: Sequence[str],
    modality: str | None,
    language: Language,
    *,
    scale: int = 999,
    placeholder: str = IMAGE_PLACEHOLDER,
) -> str:
    """Text→Region: where are these structures (or lesions)? Every box of each is wanted."""
    scan = scan_phrase(modality, language)
    if language == "zh":
        preamble = (
            f"{_ASSISTANT_ZH}你的任务是目标检测。你需要找到给定目标的所有区域。"
            f"{box_sentence('zh', scale)}{format_sentence('zh', '目标')}"
        )
        question = f"请定位这张{scan}中的{_refs(names, 'zh')}"
    else:
        preamble = (
            f"{_ASSISTANT_EN} Your task is object detection. You are required to find all the "
            f"regions of the given objects. {box_sentence('en', scale)} "
            f"{format_sentence('en', 'object')}"
        )
        question = f"Please locate {_refs(names, 'en')} in this {scan}."
    return _turn(preamble, question, placeholder, language)


def recognition_prompt(
    box: tuple[int, int, int, int],
    modality: str | None,
    language: Language,
    *,
    scale: int = 999,
    placeholder: str = IMAGE_PLACEHOLDER,
) -> str:
    """Region→Text: what is in this box (0..scale text coordinates)?"""
    scan = scan_phrase(modality, language)
    if language == "zh":
        preamble = (
            f"{_ASSISTANT_ZH}你的任务是目标识别。你需要识别给定区域中的目标。"
            f"{box_sentence('zh', scale)}"
        )
        question = f"这张{scan}中<ref>这个</ref><box>{box_text(box)}</box>是什么？"
    else:
        preamble = (
            f"{_ASSISTANT_EN} Your task is object recognition. You are required to recognize "
            f"the object in the given region. {box_sentence('en', scale)}"
        )
        question = f"What is <ref>this</ref><box>{box_text(box)}</box> in this {scan}?"
    return _turn(preamble, question, placeholder, language)


def grounding_prompt(
    names: Sequence[str],
    modality: str | None,
    language: Language,
    *,
    scale: int = 999,
    placeholder: str = IMAGE_PLACEHOLDER,
) -> str:
    """Report phrase grounding: locate these organs and describe their condition."""
    scan = scan_phrase(modality, language)
    if language == "zh":
        preamble = (
            f"{_ASSISTANT_ZH}你的任务是报告短语定位。给定一张{scan}，你需要定位给定器官的区域"
            f"并生成报告。{box_sentence('zh', scale)}{format_sentence('zh', '器官', '描述')}"
        )
        question = f"请定位并描述这张{scan}中{_refs(names, 'zh')}的情况"
    else:
        preamble = (
            f"{_ASSISTANT_EN} Your task is report phrase grounding. You are given a {scan}, and "
            "you are required to locate the region and generate a report for the given organ. "
            f"{box_sentence('en', scale)} {format_sentence('en', 'object')}"
        )
        question = f"Please locate the region and describe the condition of {_refs(names, 'en')}"
    return _turn(preamble, question, placeholder, language)


def disease_prompt(
    name: str,
    modality: str | None,
    language: Language,
    *,
    scale: int = 999,
    placeholder: str = IMAGE_PLACEHOLDER,
) -> str:
    """Disease localisation and description: where is this lesion, and what is it like?"""
    scan = scan_phrase(modality, language)
    if language == "zh":
        preamble = (
            f"{_ASSISTANT_ZH}你的任务是定位并描述病种。{box_sentence('zh', scale, '病种')}"
            f"{format_sentence('zh', '病种', '诊断')}"
        )
        question = f"请定位并描述这张{scan}中的<ref>{name}</ref>"
    else:
        preamble = (
            f"{_ASSISTANT_EN} Your task is disease localization and description. "
            f"{box_sentence('en', scale, 'disease')} {format_sentence('en', 'disease', 'diagnosis')}"
        )
        question = f"Please locate and describe <ref>{name}</ref> in this {scan}."
    return _turn(preamble, question, placeholder, language)


def report_generation_prompt(
    modality: str | None, language: Language, *, placeholder: str = IMAGE_PLACEHOLDER
) -> str:
    """Plain report generation: findings and impression, no boxes."""
    if language == "zh":
        preamble = (
            f"{_ASSISTANT_ZH}你的任务是生成诊断报告。请为这张医学影像撰写诊断报告，需包括影像诊断和"
            "影像结论两部分。影像诊断描述可见信息，影响结论列举最终的诊断结果。"
        )
    else:
        preamble = (
            f"{_ASSISTANT_EN} Your task is report generation. You are given a "
            f"{scan_phrase(modality, 'en')}, and you are required to generate a medical report "
            "consisting of findings and impressions based on the image."
        )
    return _turn(preamble, "", placeholder, language)


# -- reading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptTask:
    """What a MedRegA prompt asks for."""

    task: Task
    language: Language
    names: tuple[str, ...] = ()  # the structures or lesions asked about, in order
    box: tuple[int, int, int, int] | None = None  # identify: the query box (text coordinates)
    scan: str | None = None  # the question's (else the preamble's) name for the image
    preamble: bool = False  # a MedRegA task preamble was present

    @property
    def name(self) -> str | None:
        return self.names[0] if self.names else None


class UnknownPrompt(ValueError):
    """Not one of MedRegA's prompts this server answers."""


_CJK = re.compile(r"[\u3400-\u9fff]")
_REF = re.compile(r"<ref>(.*?)</ref>", re.S)
_BOX = re.compile(r"\[\[\[?\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*\]?\]\]")
# The format example inside a preamble: a <ref> whose box holds the letters x1, y1, … (with the
# quotes around it and whatever description it shows), wherever it stands.
_FORMAT_EXAMPLE = re.compile(
    r"[\"“]?<ref>[^<]*</ref>(?:<box>)?\[\[\s*x1\s*,\s*y1\s*,\s*x2\s*,\s*y2\s*\]\](?:</box>)?"
    r"[^\"”\n]*[\"”]?",
    re.I,
)
_IDENTIFY_REF = {"this", "这个", "此处", "该区域", "这里"}
# Task preambles, by the words that name the task (EN, ZH).
_PREAMBLES: tuple[tuple[Task, re.Pattern[str]], ...] = (
    ("locate", re.compile(r"task is object detection|任务是目标检测", re.I)),
    ("identify", re.compile(r"task is object recognition|任务是目标识别", re.I)),
    ("grounding", re.compile(r"task is report phrase grounding|任务是报告短语定位", re.I)),
    (
        "disease",
        re.compile(r"task is disease locali[sz]ation|任务是定位并描述病种", re.I),
    ),
    ("report_generation", re.compile(r"task is report generation|任务是生成诊断报告", re.I)),
)
_SCAN_EN = re.compile(r"\bin (?:this|the) ([a-z][a-z0-9 \-]*?)\s*(?:[.?!]|$)", re.I)
_GIVEN_EN = re.compile(r"\bgiven an? ([a-z][a-z0-9 \-]*?)\s*[,.]", re.I)
_SCAN_ZH = re.compile(r"这张([^，。？！<]{1,12}?)(?:中|里|上|撰写)")
_LOCATE = re.compile(r"\blocate\b|\bfind\b|\bwhere\b|定位|找到|在哪", re.I)
_DESCRIBE = re.compile(r"\bdescribe\b|\bcondition\b|描述|情况", re.I)
_REPORT = re.compile(r"\breport\b|报告", re.I)


def _split(text: str) -> tuple[str, str]:
    """(preamble, question) around the image placeholder; no placeholder: no preamble."""
    positions = [(text.find(p), p) for p in IMAGE_PLACEHOLDERS if p in text]
    if not positions:
        return "", text.strip()
    at, placeholder = min(positions)
    question = text[at + len(placeholder) :]
    for other in IMAGE_PLACEHOLDERS:
        question = question.replace(other, "")
    return text[:at].strip(), question.strip()


def _preamble_task(text: str) -> Task | None:
    return next((task for task, pattern in _PREAMBLES if pattern.search(text)), None)


def _scan(question: str, preamble: str, language: Language) -> str | None:
    if language == "zh":
        match = _SCAN_ZH.search(question) or _SCAN_ZH.search(preamble)
        return match.group(1) if match else None
    match = _SCAN_EN.search(_REF.sub("", question)) or _GIVEN_EN.search(preamble)
    return match.group(1).strip() if match else None


def classify_prompt(text: str, kind_of: Callable[[str], str] | None = None) -> PromptTask:
    """The task, language and arguments of a MedRegA prompt (raises UnknownPrompt).

    `kind_of` names a name's kind ("region", "finding", …) in the reader's vocabulary; without
    a task preamble it tells phrase grounding (organs) from disease localisation (lesions)."""
    preamble, question = _split(text)
    task = _preamble_task(preamble)
    if task is None and not preamble:
        # No placeholder: a preamble may still lead the text (a server that puts the image
        # first). Its sentences are recognised by the task words; the question follows them.
        task = _preamble_task(question)
    # The format example (`<ref>object</ref><box>[[x1, …]]</box>`) is never a question's name.
    body = _FORMAT_EXAMPLE.sub("", question)
    language: Language = "zh" if _CJK.search(_REF.sub("", text)) else "en"
    names = tuple(n for n in (r.strip() for r in _REF.findall(body)) if n)
    box_match = _BOX.search(body)
    box: tuple[int, int, int, int] | None = None
    if box_match:
        x1, y1, x2, y2 = (int(v) for v in box_match.groups())
        box = (x1, y1, x2, y2)
    scan = _scan(body, preamble, language)
    has_preamble = task is not None

    def result(kind: Task, wanted: tuple[str, ...] = names) -> PromptTask:
        query_box = box if kind == "identify" else None
        return PromptTask(kind, language, wanted, query_box, scan, has_preamble)

    identify_refs = bool(names) and names[0].lower() in _IDENTIFY_REF
    if task == "identify" or (task is None and box is not None and (not names or identify_refs)):
        if box is None:
            raise UnknownPrompt("an object-recognition prompt needs a box: <box>[[x1, y1, x2, y2]]")
        return result("identify", ())
    if task == "report_generation":
        return result("report_generation", ())
    if task in ("locate", "disease"):
        if not names:
            raise UnknownPrompt(f"a {task} prompt names what to find: <ref>…</ref>")
        return result(task)
    if task == "grounding":
        return result("grounding")
    # No preamble: read the question itself.
    located, described = bool(_LOCATE.search(body)), bool(_DESCRIBE.search(body))
    if located and described:
        if names and kind_of is not None and all(kind_of(n) == "finding" for n in names):
            return result("disease")
        return result("grounding")
    if located and names:
        return result("locate")
    if _REPORT.search(body) and not names:
        return result("report_generation", ())
    raise UnknownPrompt(
        "not a MedRegA task this server answers (object detection 'Please locate <ref>…</ref>', "
        "object recognition 'What is <ref>this</ref><box>[[…]]</box>', report phrase grounding, "
        "disease localisation and description, or report generation)"
    )
