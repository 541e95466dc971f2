"""MedRegA's prompts for its three region-centric tasks, in English and Chinese.

One module for both sides of the protocol: the `mllm` backend *writes* these prompts to a served
MedRegA, and our MedRegA-compatible server *reads* them (`classify_prompt`). Wording follows the
examples published with MedRegA (REFERENCE.md); the modality phrase names the kind of scan.

Boxes inside prompts are MedRegA text boxes: integers on a 0..scale grid relative to the image
width and height (see `grounded_text`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from shared.reports.domain import Language

Task = Literal["locate", "identify", "report"]

# InternVL-Chat-V1.2 (MedRegA's base) uses the Hermes-2 ChatML template with this system
# message; a deployment can override it (MEDREGA_MLLM_SYSTEM_PROMPT).
SYSTEM_PROMPT = "Answer the questions."

# What the prompt calls the image, by DICOM modality.
SCAN_EN = {"DX": "chest X-ray scan", "CR": "chest X-ray scan", "CT": "CT scan", "MR": "MRI scan"}
SCAN_ZH = {"DX": "胸部X光片", "CR": "胸部X光片", "CT": "CT图像", "MR": "MRI图像"}
GENERIC_EN = "medical image"
GENERIC_ZH = "医学影像"


def scan_phrase(modality: str | None, language: Language) -> str:
    table, generic = (SCAN_EN, GENERIC_EN) if language == "en" else (SCAN_ZH, GENERIC_ZH)
    return table.get(modality or "", generic)


def box_text(box: tuple[int, int, int, int]) -> str:
    return "[[" + ", ".join(str(v) for v in box) + "]]"


def locate_prompt(name: str, modality: str | None, language: Language) -> str:
    """Text→Region: where is `name`?"""
    scan = scan_phrase(modality, language)
    if language == "zh":
        return f"请定位这张{scan}中的<ref>{name}</ref>。"
    return f"Please locate <ref>{name}</ref> in this {scan}."


def identify_prompt(
    box: tuple[int, int, int, int], modality: str | None, language: Language
) -> str:
    """Region→Text: what is in this box (0..scale text coordinates)?"""
    scan = scan_phrase(modality, language)
    if language == "zh":
        return f"这张{scan}中<ref>这个</ref><box>{box_text(box)}</box>是什么？"
    return f"What is <ref>this</ref><box>{box_text(box)}</box> in this {scan}?"


def report_prompt(modality: str | None, language: Language) -> str:
    """Grounded report: every structure located and described."""
    scan = scan_phrase(modality, language)
    if language == "zh":
        return f"请定位并描述这张{scan}中每个结构的情况。"
    return (
        f"Please locate the region and describe the condition of each structure within the {scan}."
    )


@dataclass(frozen=True)
class PromptTask:
    """What a MedRegA prompt asks for."""

    task: Task
    language: Language
    name: str | None = None  # locate: the structure asked for
    box: tuple[int, int, int, int] | None = None  # identify: the query box (text coordinates)


class UnknownPrompt(ValueError):
    """Not one of MedRegA's region-centric prompts."""


_CJK = re.compile(r"[\u3400-\u9fff]")
_REF = re.compile(r"<ref>(.*?)</ref>", re.S)
_BOX = re.compile(r"\[\[\[?\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*\]?\]\]")
_IDENTIFY_REF = {"this", "这个", "此处", "该区域"}


def classify_prompt(text: str) -> PromptTask:
    """The task, language and arguments of a MedRegA prompt (raises UnknownPrompt)."""
    stripped = text.replace("<image>", "").strip()
    language: Language = "zh" if _CJK.search(_REF.sub("", stripped)) else "en"
    refs = [r.strip() for r in _REF.findall(stripped)]
    box_match = _BOX.search(stripped)
    if box_match and (not refs or refs[0].lower() in _IDENTIFY_REF):
        x1, y1, x2, y2 = (int(v) for v in box_match.groups())
        return PromptTask("identify", language, box=(x1, y1, x2, y2))
    lowered = stripped.lower()
    if refs and ("locate" in lowered or "定位" in stripped or "where" in lowered):
        if "describe" in lowered or "描述" in stripped:
            # "Please locate and describe the <ref>lesion</ref>": a grounded report about it.
            return PromptTask("report", language, name=refs[0])
        return PromptTask("locate", language, name=refs[0])
    if ("locate" in lowered and "describe" in lowered) or (
        "定位" in stripped and "描述" in stripped
    ):
        return PromptTask("report", language)
    raise UnknownPrompt(
        "not a MedRegA region task (expected 'Please locate <ref>…</ref>', "
        "'What is <ref>this</ref><box>[[…]]</box>' or a grounded-report request)"
    )
