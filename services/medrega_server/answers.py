"""MedRegA's three region tasks, answered in MedRegA's text by our reference model.

- locate (Text→Region): `<ref>{name as asked}</ref><box>[[x1, y1, x2, y2]]</box>`;
- identify (Region→Text): the region's name, nothing else (`right lung` / `右肺`);
- report: the grounded findings, one `<ref>…</ref><box>[[…]]</box>: sentence` per finding result.

The report is the `onnx` backend's report for a one-image study: the same region/lesion
aggregation (`OnnxBackend.located_regions` / `located_findings`) and the same composer, so every word comes
from `shared/vocab`. Only the findings section is sent: MedRegA's grounded report has no
impression. Boxes go out on MedRegA's 0..scale grid relative to the image as sent.

The few sentences for answers MedRegA itself never gives (structure not found, image refused)
live here, in both languages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.medrega_server.images import RequestImage
from shared.dicom.pixels import DecodedFrame
from shared.inference.backend import InstanceInput
from shared.reports.domain import Language, PixelBox, RegionFindingResult
from shared.inference.grounded_text import (
    DEFAULT_SCALE,
    format_grounded,
    normalise_name,
    region_code,
    to_pixel_box,
)
from shared.inference.medrega_prompts import PromptTask
from shared.inference.onnx_backend import OnnxBackend
from shared.inference.reference_onnx import ImagePrediction
from shared.inference.report_composer import compose_report
from shared.inference.study_images import ReadImage

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


class MedRegAAnswerer:
    """Thread-safe (the backend is); one per server."""

    def __init__(
        self, backend: OnnxBackend, *, model_name: str, scale: int = DEFAULT_SCALE
    ) -> None:
        self.backend = backend
        self.vocab = backend.vocab
        self.model_name = model_name
        self.scale = scale

    def answer(
        self,
        task: PromptTask,
        image: RequestImage,
        pixel_spacing_mm: tuple[float, float] | None = None,
    ) -> Answer:
        if task.task == "locate":
            assert task.name is not None
            return self.locate(image, task.name, task.language)
        if task.task == "identify":
            assert task.box is not None
            return self.identify(image, task.box, task.language)
        return self.report(image, task.language, task.name, pixel_spacing_mm)

    def _predict(self, image: RequestImage, query: PixelBox | None = None) -> ImagePrediction:
        queries = [[(query.x1, query.y1, query.x2, query.y2)]] if query is not None else None
        (prediction,) = self.backend.model.predict([(image.pixels, *image.window)], queries=queries)
        return prediction

    def _grounded(
        self,
        groups: list[tuple[list[tuple[str, list[PixelBox]]], str]],
        image: RequestImage,
        language: Language,
    ) -> str:
        return format_grounded(
            groups, image.width, image.height, scale=self.scale, language=language, tagged=True
        )

    # -- Text→Region --------------------------------------------------------------------------
    def locate(self, image: RequestImage, name: str, language: Language) -> Answer:
        code = region_code(name, self.vocab)
        if code is None:
            return Answer(cannot_locate(name, language), "unknown_name")
        prediction = self._predict(image)
        # The domain's regions seen with at least the model's presence threshold.
        region = next((r for r in prediction.regions if r.code == code), None)
        if region is None or region.box[2] <= region.box[0] or region.box[3] <= region.box[1]:
            return Answer(cannot_locate(name, language), "not_found")
        return Answer(
            self._grounded([([(name, [PixelBox(*region.box)])], "")], image, language), "box"
        )

    # -- Region→Text --------------------------------------------------------------------------
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

    # -- grounded report ----------------------------------------------------------------------
    def report(
        self,
        image: RequestImage,
        language: Language,
        name: str | None = None,
        pixel_spacing_mm: tuple[float, float] | None = None,
    ) -> Answer:
        prediction = self._predict(image)
        if not prediction.supported:
            return Answer(
                unsupported(self.model_name, prediction.unsupported_reason, language), "refused"
            )
        results = self._findings(image, prediction, pixel_spacing_mm)
        if name is not None:
            wanted = self._about(name)
            if wanted is None:
                return Answer(cannot_locate(name, language), "unknown_name")
            results = [r for r in results if wanted in (r.finding_code, r.region_code)]
            if not results:
                return Answer(not_seen(name, language), "not_seen")
        if not results:
            return Answer(unsupported(self.model_name, "no structure located", language), "empty")
        groups = [
            ([(self._label(r, language), [r.box])], self._sentence(r, language))
            for r in results
            if r.box is not None
        ]
        return Answer(self._grounded(groups, image, language), "report")

    def _findings(
        self,
        image: RequestImage,
        prediction: ImagePrediction,
        pixel_spacing_mm: tuple[float, float] | None,
    ) -> list[RegionFindingResult]:
        """The onnx backend's findings for a one-image study of this image."""
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
        return compose_report(self.vocab, prediction.domain, regions, findings).findings

    def _about(self, name: str) -> str | None:
        """The finding (or region) code a report prompt's <ref>name</ref> asks about: the same
        name matching (names and synonyms, EN/ZH) as the `mllm` backend's parser."""
        return normalise_name(name, self.vocab)[1]

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
            region = _name(language, result.region_name_en, result.region_name_zh)
            return info.impression(language, region)
        return _name(language, result.sentence_en, result.sentence_zh)
