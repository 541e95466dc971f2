"""The `mllm` backend: a served MedRegA (or any grounded MLLM speaking its text protocol) behind an
OpenAI-compatible chat API, producing the same `DraftResult` as the `onnx` backend.

Per study:
1. read the same images as the `onnx` backend (`study_images`); CT/MR slices evenly thinned to
   `MEDREGA_MLLM_MAX_SLICES` when set (a 40B model reads ~1 image a second);
2. render each with the UI's default window (`shared.dicom.render`) and ask MedRegA's
   grounded-report prompt in the configured language, requests in parallel up to the limit;
3. parse each answer (`grounded_text`): region names → regions; lesion names, or findings a
   region's sentence affirms (`text_mentions`) → findings;
4. aggregate slices: each region and each finding (merged across neighbouring slices) on the
   image where its box is largest — the model gives no scores to pick by;
5. compose the report with the vocabulary (order, impression, the other language) and keep the
   model's own sentences in the language it wrote.
No probabilities are invented: MedRegA gives none, so every finding's probability is None.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from shared.config import Settings
from shared.dicom.render import Rendered, render_decoded
from shared.inference.backend import (
    IdentifyAnswer,
    InstanceInput,
    LocateAnswer,
    ModelAnswerInvalid,
    StudyInput,
)
from shared.reports.domain import (
    DraftResult,
    ImageRef,
    Language,
    PixelBox,
    ReportSentence,
)
from shared.inference.grounded_text import (
    GroundedAnswer,
    GroundedName,
    detect_language,
    normalise_name,
    parse_grounded,
    parse_name_answer,
    to_text_box,
)
from shared.inference.medrega_prompts import (
    SYSTEM_PROMPT,
    identify_prompt,
    locate_prompt,
    report_prompt,
)
from shared.inference.mllm_client import ChatClient
from shared.inference.report_composer import LocatedFinding, LocatedRegion, compose_report
from shared.inference.study_images import (
    NotApplicable,
    ReadImage,
    merge_across_slices,
    read_frame,
    read_images,
    select_images,
    thin_slices,
)
from shared.inference.text_mentions import affirmed_findings, mentioned_region
from shared.vocab import Vocab, load_vocab

log = logging.getLogger(__name__)

UNSUPPORTED = "unsupported"
XRAY_DOMAIN = {"DX": "cxr", "CR": "cxr", "MR": "brain_mr"}


def _area(box: PixelBox) -> float:
    return (box.x2 - box.x1) * (box.y2 - box.y1)


def _contains(box: PixelBox, x: float, y: float) -> bool:
    return box.x1 <= x <= box.x2 and box.y1 <= y <= box.y2


@dataclass
class _Item:
    """One grounded statement read from one image's answer."""

    index: int  # into the study's images
    region_code: str
    finding_code: str | None
    box: PixelBox
    text: str  # the model's sentence ('' when it wrote none)
    language: Language
    flag: str | None


@dataclass
class _ImageReading:
    items: list[_Item] = field(default_factory=list)
    loose: list[tuple[str, Language]] = field(default_factory=list)  # ungrounded sentences
    unknown_names: list[str] = field(default_factory=list)
    unusable_boxes: int = 0
    language: Language = "en"


class MllmBackend:
    name = "mllm"

    def __init__(
        self, settings: Settings, vocab: Vocab | None = None, client: ChatClient | None = None
    ) -> None:
        self.settings = settings
        self.vocab = vocab or load_vocab()
        self.language: Language = settings.mllm_language
        self.scale = settings.mllm_coord_scale
        self.model_name = settings.mllm_model
        self.model_version = settings.mllm_model_version
        api_key = settings.mllm_api_key.get_secret_value() if settings.mllm_api_key else None
        self.client = client or ChatClient(
            settings.mllm_base_url,
            settings.mllm_model,
            api_key=api_key,
            system_prompt=settings.mllm_system_prompt or SYSTEM_PROMPT,
            timeout_s=settings.mllm_timeout_s,
            retries=settings.mllm_retries,
            concurrency=settings.mllm_concurrency,
            max_tokens=settings.mllm_max_tokens,
        )
        self._supported_modalities = {m for d in self.vocab.domains for m in d.modalities}

    # -- the draft ------------------------------------------------------------------------
    def draft(self, study: StudyInput) -> DraftResult:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        limit = self.settings.mllm_max_slices
        try:
            selected = select_images(study, self._supported_modalities, self.model_name)
            # Thin the instances before decoding them; thinning again after is for multi-frame
            # instances (a no-op for a series of single-frame slices).
            images = thin_slices(read_images(thin_slices(selected, limit)), limit)
        except NotApplicable as exc:
            return self._not_applicable(str(exc), timings)
        timings["read_ms"] = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        workers = min(self.settings.mllm_concurrency, len(images))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            answers = list(pool.map(self._ask_report, images))
        timings["inference_ms"] = (time.perf_counter() - t0) * 1000
        timings["images"] = float(len(images))

        t0 = time.perf_counter()
        readings = [self._reading(i, images[i], a) for i, a in enumerate(answers)]
        items = [item for r in readings for item in r.items]
        if not items:
            said = next((a.raw for a in answers if a.raw.strip()), "")
            raise ModelAnswerInvalid(
                f"no grounded structure in the answer(s) of {self.model_name}: {said[:300]!r}"
            )
        try:
            domain = self._domain(images[0].instance.modality, items)
        except NotApplicable as exc:
            return self._not_applicable(str(exc), timings)
        result = self._compose(domain, images, items, readings)
        result.timings_ms = {**timings, "compose_ms": (time.perf_counter() - t0) * 1000}
        return result

    def _not_applicable(self, reason: str, timings: dict[str, float]) -> DraftResult:
        return DraftResult(
            domain=UNSUPPORTED,
            applicable=False,
            reason=reason,
            model_name=self.model_name,
            model_version=self.model_version,
            backend="mllm",
            timings_ms=timings,
        )

    def _png(self, image: ReadImage) -> Rendered:
        max_side = self.settings.mllm_image_max_side or None
        return render_decoded(image.frame, max_side=max_side)

    def _ask_report(self, image: ReadImage) -> GroundedAnswer:
        prompt = report_prompt(image.instance.modality, self.language)
        rendered = self._png(image)
        extra = None
        spacing = image.frame.pixel_spacing_mm
        if self.settings.mllm_send_pixel_spacing and spacing is not None:
            # Per pixel of the image as sent (it may be downscaled).
            extra = {"pixel_spacing_mm": [spacing[0] * rendered.scale, spacing[1] * rendered.scale]}
        answer = self.client.ask(prompt, rendered.png, extra)
        rows, columns = image.frame.pixels.shape
        return parse_grounded(answer, columns, rows, scale=self.scale, vocab=self.vocab)

    # -- reading one answer ---------------------------------------------------------------
    def _reading(self, index: int, image: ReadImage, answer: GroundedAnswer) -> _ImageReading:
        reading = _ImageReading(language=answer.language)
        lesions: list[tuple[GroundedName, str, Language]] = []
        for segment in answer.segments:
            language = detect_language(segment.text) if segment.text else answer.language
            grounded = False
            for name in segment.names:
                if name.kind == "unknown":
                    reading.unknown_names.append(name.text)
                    continue
                if name.kind == "finding":
                    lesions.append((name, segment.text, language))
                    grounded = True
                    continue
                assert name.code is not None
                box = next((b for b in name.boxes if b.pixel is not None), None)
                reading.unusable_boxes += sum(1 for b in name.boxes if b.pixel is None)
                if box is None or box.pixel is None:
                    continue
                grounded = True
                affirmed = affirmed_findings(segment.text, language, name.code, None, self.vocab)
                codes: list[str | None] = [*affirmed] or [None]
                for finding_code in codes:
                    reading.items.append(
                        _Item(
                            index,
                            name.code,
                            finding_code,
                            box.pixel,
                            segment.text,
                            language,
                            box.flag,
                        )
                    )
            if not grounded and segment.text:
                reading.loose.append((segment.text, language))
        regions = {i.region_code: i.box for i in reading.items}
        for name, text, language in lesions:
            assert name.code is not None
            allowed = self.vocab.finding(name.code).regions
            for box in name.boxes:
                if box.pixel is None:
                    reading.unusable_boxes += 1
                    continue
                region = self._lesion_region(name, text, language, allowed, box.pixel, regions)
                reading.items.append(
                    _Item(index, region, name.code, box.pixel, text, language, box.flag)
                )
        return reading

    def _lesion_region(
        self,
        name: GroundedName,
        text: str,
        language: Language,
        allowed: tuple[str, ...],
        box: PixelBox,
        regions: dict[str, PixelBox],
    ) -> str:
        """The region a lesion lies in: named in its sentence, else the allowed region whose box
        holds the lesion's centre, else the first allowed one."""
        named = mentioned_region(text, language, allowed, self.vocab)
        if named:
            return named
        cx, cy = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
        for code in allowed:
            if code in regions and _contains(regions[code], cx, cy):
                return code
        return allowed[0]

    def _domain(self, modality: str | None, items: list[_Item]) -> str:
        if modality in XRAY_DOMAIN:
            return XRAY_DOMAIN[modality]
        candidates = [d.code for d in self.vocab.domains if modality in d.modalities]
        votes: Counter[str] = Counter()
        for item in items:
            for domain in self.vocab.region(item.region_code).domains:
                if domain in candidates:
                    votes[domain] += 1
        if not votes:
            raise NotApplicable(f"{self.model_name} named no {modality} structure we know")
        return votes.most_common(1)[0][0]

    # -- study level ----------------------------------------------------------------------
    def _compose(
        self,
        domain: str,
        images: list[ReadImage],
        items: list[_Item],
        readings: list[_ImageReading],
    ) -> DraftResult:
        # Normal regions, each on the image where its box is largest (an abnormal region is
        # reported through its finding, so its region box is not needed).
        best_region: dict[str, _Item] = {}
        for item in items:
            current = best_region.get(item.region_code)
            if item.finding_code is None and (
                current is None or _area(item.box) > _area(current.box)
            ):
                best_region[item.region_code] = item
        # MedRegA gives no scores: a lesion's key image is where its box is largest.
        findings = merge_across_slices(
            [i for i in items if i.finding_code is not None],
            slice_of=lambda i: i.index,
            kind_of=lambda i: i.finding_code or "",
            box_of=lambda i: (i.box.x1, i.box.y1, i.box.x2, i.box.y2),
            rank=lambda i: _area(i.box),
        )
        located_regions = [
            LocatedRegion(code, images[i.index].ref, i.box, None) for code, i in best_region.items()
        ]
        located_findings = [
            LocatedFinding(
                i.finding_code or "",
                i.region_code,
                images[i.index].ref,
                i.box,
                None,
                images[i.index].extent_mm(i.box),
            )
            for i in findings
        ]
        composed = compose_report(self.vocab, domain, located_regions, located_findings)
        by_key = {(i.region_code, i.finding_code, i.box): i for i in findings}
        by_key.update({(code, None, i.box): i for code, i in best_region.items()})
        for result in composed.findings:
            if result.box is None:
                continue
            source = by_key.get((result.region_code, result.finding_code, result.box))
            if source is None:
                continue
            result.box_flag = source.flag
            if source.text:  # the model's own words, in the language it wrote
                setattr(result, f"sentence_{source.language}", source.text)
        for sentence in composed.sentences:
            if sentence.section == "findings" and len(sentence.finding_ordinals) == 1:
                result = composed.findings[sentence.finding_ordinals[0]]
                sentence.en, sentence.zh = result.sentence_en, result.sentence_zh
        written: Language = Counter(r.language for r in readings).most_common(1)[0][0]
        composed.sentences = self._merge_shared_sentences(composed.sentences, written)
        # Sentences grounded in no known structure are kept (both languages: the model's words)
        # at the end of the findings section, so nothing the model said is lost.
        loose = [text for r in readings for text, _ in r.loose]
        end = sum(1 for s in composed.sentences if s.section == "findings")
        for offset, text in enumerate(dict.fromkeys(loose)):
            composed.sentences.insert(end + offset, ReportSentence("findings", text, text, []))
        return DraftResult(
            domain=domain,
            applicable=True,
            reason=None,
            model_name=self.model_name,
            model_version=self.model_version,
            backend="mllm",
            findings=composed.findings,
            sentences=composed.sentences,
            notes=self._notes(readings),
        )

    @staticmethod
    def _merge_shared_sentences(
        sentences: list[ReportSentence], language: Language
    ) -> list[ReportSentence]:
        """MedRegA grounds one sentence in several regions ("right lung, left lung: No
        effusion."): one report sentence pointing at all of them, not the text repeated. The
        other language's per-region wording is joined. `language`: the one the model wrote."""
        other: Language = "zh" if language == "en" else "en"
        merged: list[ReportSentence] = []
        by_text: dict[str, ReportSentence] = {}
        for sentence in sentences:
            own = getattr(sentence, language)
            first = by_text.get(own) if sentence.section == "findings" else None
            if first is None:
                merged.append(sentence)
                if sentence.section == "findings":
                    by_text[own] = sentence
                continue
            first.finding_ordinals.extend(sentence.finding_ordinals)
            theirs = getattr(sentence, other)
            if theirs not in getattr(first, other):
                joiner = "" if other == "zh" else " "
                setattr(first, other, getattr(first, other) + joiner + theirs)
        return merged

    def _notes(self, readings: list[_ImageReading]) -> list[str]:
        notes: list[str] = []
        other = "zh" if self.language == "en" else "en"
        if any(r.language != self.language for r in readings):
            names = {"en": "English", "zh": "Chinese"}
            notes.append(
                f"{self.model_name} answered in {names[other]} when asked for "
                f"{names[self.language]}; its sentences are kept in {names[other]} and the "
                f"{names[self.language]} wording comes from the vocabulary"
            )
        unknown = sorted({n for r in readings for n in r.unknown_names})
        if unknown:
            notes.append("names not in the vocabulary (kept as text): " + ", ".join(unknown)[:300])
        unusable = sum(r.unusable_boxes for r in readings)
        if unusable:
            notes.append(f"{unusable} box(es) in the answer could not be used (inverted/malformed)")
        return notes

    # -- interactive region tasks ---------------------------------------------------------
    def locate(self, image: InstanceInput, frame: int, query: str) -> LocateAnswer:
        read = read_frame(image, frame)
        language = detect_language(query)
        answer = self.client.ask(
            locate_prompt(query, image.modality, language), self._png(read).png
        )
        rows, columns = read.frame.pixels.shape
        parsed = parse_grounded(answer, columns, rows, scale=self.scale, vocab=self.vocab)
        kind, code = normalise_name(query, self.vocab)
        boxes = [
            b.pixel
            for s in parsed.segments
            for n in s.names
            for b in n.boxes
            if b.pixel is not None
        ]
        if kind != "region":
            code = next(
                (n.code for s in parsed.segments for n in s.names if n.kind == "region"), None
            )
        ref = ImageRef(image.sop_instance_uid, image.sop_class_uid, frame)
        return LocateAnswer(code, ref, boxes, None)

    def identify(self, image: InstanceInput, frame: int, box: PixelBox) -> IdentifyAnswer:
        read = read_frame(image, frame)
        rows, columns = read.frame.pixels.shape
        text_box = to_text_box(box, columns, rows, self.scale)
        prompt = identify_prompt(text_box, image.modality, self.language)
        name = parse_name_answer(self.client.ask(prompt, self._png(read).png), self.vocab)
        if name.kind == "region" and name.code is not None:
            region = self.vocab.region(name.code)
            return IdentifyAnswer(region.code, region.en, region.zh, None)
        return IdentifyAnswer(None, name.text, name.text, None)
