"""MedRegA's tasks, answered in MedRegA's text by our reference model.

- object detection (Text→Region): `<ref>{name as asked}</ref><box>[[x1, y1, x2, y2]]</box>`;
  a lesion name gets every box of that lesion (`<box>[[…], […]]</box>`); several names are
  comma-separated;
- object recognition (Region→Text): the region's name, nothing else (`right lung` / `右肺`);
- report phrase grounding: per organ asked, `<ref>organ</ref><box>[[organ box]]</box>: what
  the reference model found there` (no organs named: every finding result, as a grounded report);
- disease localisation and description: `<ref>lesion</ref><box>[[…], …]</box>: description`, or
  that it is not seen;
- report generation: `Findings: … Impression: …` / `影像诊断：… 影像结论：…`, no boxes.

Everything is the `onnx` backend's reading of a one-image study: the same region/lesion
aggregation (`OnnxBackend.located_regions` / `located_findings`) and the same composer, so every
word comes from `shared/vocab`. Boxes go out on MedRegA's 0..scale grid relative to the image as
sent.

The few sentences for answers MedRegA itself never gives (structure not found, image refused)
live here, in both languages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.medrega_server.images import RequestImage
from shared.dicom.pixels import DecodedFrame
from shared.inference.backend import InstanceInput
from shared.inference.grounded_text import (
    DEFAULT_SCALE,
    format_grounded,
    normalise_name,
    to_pixel_box,
)
from shared.inference.medrega_prompts import PromptTask
from shared.inference.onnx_backend import OnnxBackend
from shared.inference.reference_onnx import ImagePrediction
from shared.inference.report_composer import ComposedReport, compose_report
from shared.inference.study_images import ReadImage
from shared.reports.domain import Language, PixelBox, RegionFindingResult

# The request's image stands in for a one-image study; nothing here is stored or sent on.
_REQUEST_INSTANCE = InstanceInput(
    path=Path("request"),
    sop_instance_uid="request",
    sop_class_uid="",
    series_instance_uid="request",
    modality=None,
    series_number=None,
    instance_number=1,
    body_part_examined=None,
    series_description=None,
)


class AnswerError(ValueError):
    """The prompt can't be answered as asked (e.g. an invalid query box); a client error."""


@dataclass(frozen=True)
class Answer:
    text: str
    outcome: str  # for logs only (never content): "box", "not_found", "report", "refused", …


def _name(language: Language, en: str, zh: str) -> str:
    return en if language == "en" else zh


def cannot_locate(name: str, language: Language) -> str:
    if language == "zh":
        return f"无法在此图像中定位{name}。"
    return f"The {name} cannot be located in this image."


def not_seen(name: str, language: Language) -> str:
    if language == "zh":
        return f"此图像中未见{name}。"
    return f"No {name} is seen in this image."


def unsupported(model_name: str, reason: str | None, language: Language) -> str:
    if language == "zh":
        return f"此图像不在{model_name}支持的范围内（胸部X光、胸部CT、腹部CT、脑MRI），无法作答。"
    why = f" ({reason})" if reason else ""
    return (
        f"This image is not supported by {model_name}{why}; it reads chest X-rays, chest CT, "
        "abdominal CT and brain MRI."
    )


@dataclass(frozen=True)
class _Reading:
    """The reference model's reading of the request image as a one-image study."""

    prediction: ImagePrediction
    region_boxes: dict[str, PixelBox]  # every region located, abnormal ones included
    composed: ComposedReport


Groups = list[tuple[list[tuple[str, list[PixelBox]]], str]]


class MedRegAAnswerer:
    """Thread-safe (the backend is); one per server."""

    def __init__(
        self, backend: OnnxBackend, *, model_name: str, scale: int = DEFAULT_SCALE
    ) -> None:
        self.backend = backend
        self.vocab = backend.vocab
        self.model_name = model_name
        self.scale = scale

    def kind_of(self, name: str) -> str:
        """ "region", "finding" or "unknown": how `classify_prompt` tells organs from lesions in
        a question without a task preamble."""
        return normalise_name(name, self.vocab)[0]

    def answer(
        self,
        task: PromptTask,
        image: RequestImage,
        pixel_spacing_mm: tuple[float, float] | None = None,
    ) -> Answer:
        if task.task == "identify":
            assert task.box is not None
            return self.identify(image, task.box, task.language)
        if task.task == "locate":
            return self.locate(image, task.names, task.language)
        if task.task == "report_generation":
            return self.report_generation(image, task.language, pixel_spacing_mm)
        if task.task == "disease":
            return self.disease(image, task.names, task.language, pixel_spacing_mm)
        return self.grounding(image, task.names, task.language, pixel_spacing_mm)

    def _predict(self, image: RequestImage, query: PixelBox | None = None) -> ImagePrediction:
        queries = [[(query.x1, query.y1, query.x2, query.y2)]] if query is not None else None
        (prediction,) = self.backend.model.predict([(image.pixels, *image.window)], queries=queries)
        return prediction

    def _grounded(self, groups: Groups, image: RequestImage, language: Language) -> str:
        return format_grounded(
            groups, image.width, image.height, scale=self.scale, language=language, tagged=True
        )

    def _read(self, image: RequestImage, pixel_spacing_mm: tuple[float, float] | None) -> _Reading:
        """The one-image study's regions and composed findings (`supported` may be False)."""
        prediction = self._predict(image)
        if not prediction.supported:
            return _Reading(prediction, {}, ComposedReport([], []))
        frame = DecodedFrame(
            pixels=image.pixels,
            window=image.window,
            sop_instance_uid=_REQUEST_INSTANCE.sop_instance_uid,
            sop_class_uid=_REQUEST_INSTANCE.sop_class_uid,
            frame=1,
            pixel_spacing_mm=pixel_spacing_mm,
        )
        read = [ReadImage(_REQUEST_INSTANCE, frame, 0.0)]
        regions = self.backend.located_regions(read, [prediction])
        findings = self.backend.located_findings(read, [prediction])
        composed = compose_report(self.vocab, prediction.domain, regions, findings)
        return _Reading(prediction, {r.region_code: r.box for r in regions}, composed)

    # -- object detection (Text→Region) -------------------------------------------------------
    def locate(self, image: RequestImage, names: tuple[str, ...], language: Language) -> Answer:
        prediction = self._predict(image)
        regions = {r.code: r for r in prediction.regions}
        found: list[tuple[str, list[PixelBox]]] = []
        missing: list[str] = []
        lesions: list[RegionFindingResult] | None = None
        for name in names:
            kind, code = normalise_name(name, self.vocab)
            boxes: list[PixelBox] = []
            if kind == "region" and code in regions:
                region = regions[code]
                if region.box[2] > region.box[0] and region.box[3] > region.box[1]:
                    boxes = [PixelBox(*region.box)]
            elif kind == "finding" and prediction.supported:
                if lesions is None:
                    lesions = self._read(image, None).composed.findings
                boxes = [r.box for r in lesions if r.finding_code == code and r.box is not None]
            if boxes:
                found.append((name, boxes))
            else:
                missing.append(name)
        if not found:
            sentences = [cannot_locate(n, language) for n in missing]
            return Answer(self._sentences(sentences, language), "not_found")
        groups: Groups = [(found, "")]
        groups += [([], cannot_locate(n, language)) for n in missing]
        return Answer(self._grounded(groups, image, language), "box")

    @staticmethod
    def _sentences(sentences: list[str], language: Language) -> str:
        return ("" if language == "zh" else " ").join(sentences)

    # -- object recognition (Region→Text) -------------------------------------------------------
    def identify(
        self, image: RequestImage, box: tuple[int, int, int, int], language: Language
    ) -> Answer:
        parsed = to_pixel_box(box, image.width, image.height, self.scale)
        if parsed.pixel is None:
            raise AnswerError(
                f"the query box {list(box)} is not a box on the 0..{self.scale} grid "
                f"({parsed.flag})"
            )
        prediction = self._predict(image, parsed.pixel)
        if not prediction.queries:
            return Answer(
                unsupported(self.model_name, prediction.unsupported_reason, language), "refused"
            )
        region = self.vocab.region(prediction.queries[0].region_code)
        return Answer(region.name(language), "name")

    # -- report phrase grounding ----------------------------------------------------------------
    def grounding(
        self,
        image: RequestImage,
        names: tuple[str, ...],
        language: Language,
        pixel_spacing_mm: tuple[float, float] | None = None,
    ) -> Answer:
        reading = self._read(image, pixel_spacing_mm)
        if not reading.prediction.supported:
            return self._unsupported(reading.prediction, language)
        results = reading.composed.findings
        if not names:  # no organ named: every finding result, grounded (a full grounded report)
            if not results:
                return Answer(
                    unsupported(self.model_name, "no structure located", language), "empty"
                )
            groups: Groups = [
                ([(self._label(r, language), [r.box])], self._sentence(r, language))
                for r in results
                if r.box is not None
            ]
            return Answer(self._grounded(groups, image, language), "report")
        # MedRegA describes the organs it finds; one it can't find is left out of the answer,
        # and only when it finds none does the answer say so.
        groups = []
        missing: list[str] = []
        for name in names:
            kind, code = normalise_name(name, self.vocab)
            if kind == "finding":
                group = self._disease_group(reading, name, code, language)
                if group[0]:
                    groups.append(group)
                else:
                    missing.append(name)
            elif kind == "region" and code in reading.region_boxes:
                about = [r for r in results if r.region_code == code]
                text = self._sentences([self._sentence(r, language) for r in about], language)
                groups.append(([(name, [reading.region_boxes[code]])], text))
            else:
                missing.append(name)
        if not groups:
            sentences = [cannot_locate(n, language) for n in missing]
            return Answer(self._sentences(sentences, language), "not_found")
        return Answer(self._grounded(groups, image, language), "report")

    # -- disease localisation and description ---------------------------------------------------
    def disease(
        self,
        image: RequestImage,
        names: tuple[str, ...],
        language: Language,
        pixel_spacing_mm: tuple[float, float] | None = None,
    ) -> Answer:
        reading = self._read(image, pixel_spacing_mm)
        if not reading.prediction.supported:
            return self._unsupported(reading.prediction, language)
        groups: Groups = []
        for name in names:
            kind, code = normalise_name(name, self.vocab)
            if kind == "finding":
                groups.append(self._disease_group(reading, name, code, language))
            elif kind == "region" and code in reading.region_boxes:
                about = [r for r in reading.composed.findings if r.region_code == code]
                text = self._sentences([self._sentence(r, language) for r in about], language)
                groups.append(([(name, [reading.region_boxes[code]])], text))
            else:
                groups.append(([], cannot_locate(name, language)))
        if all(not g[0] for g in groups):
            return Answer(self._sentences([g[1] for g in groups], language), "not_seen")
        return Answer(self._grounded(groups, image, language), "lesion")

    def _disease_group(
        self, reading: _Reading, name: str, code: str | None, language: Language
    ) -> tuple[list[tuple[str, list[PixelBox]]], str]:
        lesions = [
            r for r in reading.composed.findings if r.finding_code == code and r.box is not None
        ]
        if not lesions:
            return ([], not_seen(name, language))
        boxes = [r.box for r in lesions if r.box is not None]
        text = self._sentences(
            list(dict.fromkeys(self._sentence(r, language) for r in lesions)), language
        )
        return ([(name, boxes)], text)

    # -- report generation ----------------------------------------------------------------------
    def report_generation(
        self,
        image: RequestImage,
        language: Language,
        pixel_spacing_mm: tuple[float, float] | None = None,
    ) -> Answer:
        reading = self._read(image, pixel_spacing_mm)
        if not reading.prediction.supported:
            return self._unsupported(reading.prediction, language)
        findings = self._sentences(
            [self._sentence(r, language) for r in reading.composed.findings], language
        )
        impression = self._sentences(
            [getattr(s, language) for s in reading.composed.sentences if s.section == "impression"],
            language,
        )
        if language == "zh":
            return Answer(f"影像诊断：{findings}影像结论：{impression}", "report")
        return Answer(f"Findings: {findings} Impression: {impression}", "report")

    def _unsupported(self, prediction: ImagePrediction, language: Language) -> Answer:
        return Answer(
            unsupported(self.model_name, prediction.unsupported_reason, language), "refused"
        )

    @staticmethod
    def _label(result: RegionFindingResult, language: Language) -> str:
        if result.finding_code is not None:
            assert result.finding_name_en is not None and result.finding_name_zh is not None
            return _name(language, result.finding_name_en, result.finding_name_zh)
        return _name(language, result.region_name_en, result.region_name_zh)

    def _sentence(self, result: RegionFindingResult, language: Language) -> str:
        if result.finding_code is not None and result.size_mm is None:
            # The vocabulary's finding sentences state a size, and a PNG carries no pixel
            # spacing: without `pixel_spacing_mm` the size-free impression wording is used
            # rather than a made-up "0 mm".
            info = self.vocab.finding(result.finding_code)
            return info.impression(language, self.vocab.region(result.region_code))
        return _name(language, result.sentence_en, result.sentence_zh)
