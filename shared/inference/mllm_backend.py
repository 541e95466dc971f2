"""The `mllm` backend: a served MedRegA (or any grounded MLLM speaking its text protocol) behind an
OpenAI-compatible chat API, producing the same `DraftResult` as the `onnx` backend.

It drafts the way MedRegA was trained (`medrega_prompts`, README "Model backends"). Per study:
1. read the same images as the `onnx` backend (`study_images`); the candidate domains follow from
   the modality and BodyPartExamined (CT: chest or abdomen; both when the header doesn't say);
2. plan the requests: per image, one report phrase-grounding prompt per region group of the
   domain (the vocabulary's `grounding_groups`, e.g. right lung + left lung) and one disease
   localisation prompt per finding the vocabulary lists for the domain; one plain report
   generation for the study (its central image). CT/MR slices are thinned to
   `MEDREGA_MLLM_MAX_SLICES` and further until the plan fits `MEDREGA_MLLM_MAX_REQUESTS`;
3. ask them, in parallel up to the client's limit, in the configured language;
4. read each answer (`grounded_text`): organ names → regions, the findings a region's sentence
   affirms (`text_mentions`) → findings on the region's box, lesion names → findings on the
   lesion's boxes (one finding per box). A lesion box replaces the region box of the same finding
   on the same image;
5. aggregate slices: each region and each finding (merged across neighbouring slices) on the
   image where its box is largest — the model gives no scores to pick by;
6. compose the report with the vocabulary (order, the other language) and keep the model's own
   sentences in the language it wrote; the impression is the plain report's, where it wrote one.
   A plain report that affirms a finding no grounded answer located is noted for the reviewer.
No probabilities are invented: MedRegA gives none, so every finding's probability is None.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from shared.config import Settings
from shared.dicom.render import Rendered, render_decoded
from shared.inference.backend import (
    IdentifyAnswer,
    InstanceInput,
    LocateAnswer,
    ModelAnswerInvalid,
    StudyInput,
)
from shared.inference.grounded_text import (
    GroundedAnswer,
    PlainReport,
    detect_language,
    normalise_name,
    parse_grounded,
    parse_name_answer,
    parse_plain_report,
    to_text_box,
)
from shared.inference.medrega_prompts import (
    SYSTEM_PROMPT,
    detection_prompt,
    disease_prompt,
    grounding_prompt,
    recognition_prompt,
    report_generation_prompt,
)
from shared.inference.mllm_client import ChatClient
from shared.inference.report_composer import LocatedFinding, LocatedRegion, compose_report
from shared.inference.study_images import (
    NotApplicable,
    ReadImage,
    T,
    box_iou,
    merge_across_slices,
    read_frame,
    read_images,
    select_images,
    thin_slices,
)
from shared.inference.text_mentions import (
    affirmed_findings,
    affirmed_in_domain,
    mentioned_region,
)
from shared.reports.domain import (
    DraftResult,
    ImageRef,
    Language,
    PixelBox,
    RegionFindingResult,
    ReportSentence,
)
from shared.vocab import DomainInfo, FindingInfo, Vocab, load_vocab

log = logging.getLogger(__name__)

UNSUPPORTED = "unsupported"
XRAY_DOMAIN = {"DX": "cxr", "CR": "cxr", "MR": "brain_mr"}
SAME_BOX_IOU = 0.9
RequestKind = Literal["grounding", "disease", "report_generation"]


def _area(box: PixelBox) -> float:
    return (box.x2 - box.x1) * (box.y2 - box.y1)


def _contains(box: PixelBox, x: float, y: float) -> bool:
    return box.x1 <= x <= box.x2 and box.y1 <= y <= box.y2


@dataclass(frozen=True)
class PlannedRequest:
    """One prompt of a study's plan, on one of its images."""

    kind: RequestKind
    image: int  # index into the study's images
    prompt: str
    finding_code: str | None = None  # disease localisation: the finding asked about


@dataclass(frozen=True)
class StudyPlan:
    domains: tuple[DomainInfo, ...]  # the candidates; the answers decide among several
    groups: tuple[tuple[str, ...], ...]  # region codes per phrase-grounding prompt
    findings: tuple[FindingInfo, ...]  # asked by disease localisation
    report_generation: bool

    @property
    def per_image(self) -> int:
        return len(self.groups) + len(self.findings)

    def cost(self, images: int) -> int:
        """Requests for a study of this many images."""
        return images * self.per_image + (1 if self.report_generation and images else 0)


@dataclass
class _Item:
    """One grounded statement read from one image's answers."""

    index: int  # into the study's images
    region_code: str
    finding_code: str | None
    box: PixelBox
    text: str  # the model's sentence ('' when it wrote none)
    language: Language
    flag: str | None
    lesion: bool = False  # the box is the lesion's own (a lesion name), not its region's


def _distinct(items: list[_Item]) -> list[_Item]:
    """One region's boxes on one image, the same box given twice (asked in two groups) once."""
    kept: list[_Item] = []
    for item in items:
        box = (item.box.x1, item.box.y1, item.box.x2, item.box.y2)
        if all(box_iou(box, (k.box.x1, k.box.y1, k.box.x2, k.box.y2)) < SAME_BOX_IOU for k in kept):
            kept.append(item)
    return kept


@dataclass
class _ImageReading:
    items: list[_Item] = field(default_factory=list)
    loose: list[tuple[str, Language]] = field(default_factory=list)  # ungrounded sentences
    unknown_names: list[str] = field(default_factory=list)
    unusable_boxes: int = 0


class MllmBackend:
    name = "mllm"

    def __init__(
        self, settings: Settings, vocab: Vocab | None = None, client: ChatClient | None = None
    ) -> None:
        self.settings = settings
        self.vocab = vocab or load_vocab()
        self.language: Language = settings.mllm_language
        self.scale = settings.mllm_coord_scale
        self.placeholder = settings.mllm_image_placeholder
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
        # A budget that can't hold one image of the costliest plan would refuse every study of
        # that kind: say so at start, not per study.
        modalities = sorted(self._supported_modalities)
        worst = max(self.plan(m, None).cost(1) for m in modalities)
        if worst > settings.mllm_max_requests:
            raise ValueError(
                f"MEDREGA_MLLM_MAX_REQUESTS={settings.mllm_max_requests} is below the {worst} "
                "requests one image needs (phrase-grounding groups + disease prompts + report "
                "generation); raise it or turn off MEDREGA_MLLM_DISEASE_PROMPTS"
            )

    # -- the plan -------------------------------------------------------------------------
    def candidate_domains(self, modality: str | None, body_part: str | None) -> list[DomainInfo]:
        """The domains a study may belong to: by modality, narrowed by BodyPartExamined."""
        by_modality = [d for d in self.vocab.domains if modality in d.modalities]
        part = (body_part or "").strip().upper()
        by_part = [d for d in by_modality if d.body_part == part]
        return by_part or by_modality

    def plan(self, modality: str | None, body_part: str | None) -> StudyPlan:
        domains = tuple(self.candidate_domains(modality, body_part))
        groups = tuple(dict.fromkeys(g for d in domains for g in d.grounding_groups))
        findings: tuple[FindingInfo, ...] = ()
        if self.settings.mllm_disease_prompts:
            codes = dict.fromkeys(f.code for d in domains for f in self.vocab.findings_for(d.code))
            findings = tuple(self.vocab.finding(c) for c in codes)
        return StudyPlan(domains, groups, findings, self.settings.mllm_report_generation)

    def _fit(self, items: list[T], plan: StudyPlan) -> list[T]:
        """The slices to send: `MEDREGA_MLLM_MAX_SLICES`, then fewer until the plan fits."""
        kept = thin_slices(items, self.settings.mllm_max_slices)
        limit = len(kept)
        while len(kept) > 1 and plan.cost(len(kept)) > self.settings.mllm_max_requests:
            limit -= 1
            kept = thin_slices(items, limit)
        return kept

    def requests(self, plan: StudyPlan, images: list[ReadImage]) -> list[PlannedRequest]:
        """The grounded prompts for every image; report generation follows their answers."""
        language, scale, placeholder = self.language, self.scale, self.placeholder
        planned: list[PlannedRequest] = []
        for index, image in enumerate(images):
            modality = image.instance.modality
            for group in plan.groups:
                names = [self.vocab.region(code).name(language) for code in group]
                prompt = grounding_prompt(
                    names, modality, language, scale=scale, placeholder=placeholder
                )
                planned.append(PlannedRequest("grounding", index, prompt))
            for finding in plan.findings:
                prompt = disease_prompt(
                    finding.name(language), modality, language, scale=scale, placeholder=placeholder
                )
                planned.append(PlannedRequest("disease", index, prompt, finding.code))
        return planned

    def _report_image(self, items: list[_Item], domain: str, count: int) -> int:
        """Where the plain report is asked: the image with the most abnormal findings of the
        domain (critical ones first), else the central one."""
        in_domain = {f.code for f in self.vocab.findings_for(domain)}
        score: Counter[int] = Counter()
        for item in items:
            if item.finding_code in in_domain:
                critical = self.vocab.finding(item.finding_code or "").critical
                score[item.index] += 100 if critical else 1
        return score.most_common(1)[0][0] if score else count // 2

    # -- the draft ------------------------------------------------------------------------
    def draft(self, study: StudyInput) -> DraftResult:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        try:
            selected = select_images(study, self._supported_modalities, self.model_name)
            first, header = selected[0]
            body_part = first.body_part_examined or str(header.get("BodyPartExamined", ""))
            plan = self.plan(first.modality, body_part or None)
            # Thin the instances before decoding them; thinning again after is for multi-frame
            # instances (a no-op for a series of single-frame slices).
            images = self._fit(read_images(self._fit(selected, plan)), plan)
        except NotApplicable as exc:
            return self._not_applicable(str(exc), timings)
        timings["read_ms"] = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        planned = self.requests(plan, images)
        pngs = [self._render(image) for image in images]
        workers = max(1, min(self.settings.mllm_concurrency, len(planned)))
        answers = self._ask_all(planned, pngs, workers)

        readings = [_ImageReading() for _ in images]
        languages: list[Language] = []
        for request, answer in zip(planned, answers, strict=True):
            image = images[request.image]
            rows, columns = image.frame.pixels.shape
            parsed = parse_grounded(answer, columns, rows, scale=self.scale, vocab=self.vocab)
            if answer.strip():
                languages.append(parsed.language)
            self._read_answer(readings[request.image], request, parsed)
        items = [item for r in readings for item in self._resolved(r)]
        if not items:
            said = next((a for a in answers if a.strip()), "")
            raise ModelAnswerInvalid(
                f"no grounded structure in the answer(s) of {self.model_name}: {said[:300]!r}"
            )
        try:
            domain = self._domain(images[0].instance.modality, plan, items)
        except NotApplicable as exc:
            return self._not_applicable(str(exc), timings)
        plain: PlainReport | None = None
        seen_there: set[str] = set()  # findings grounded on the plain report's image
        if plan.report_generation:
            # After the grounded answers, on the image that shows the most: a plain report of a
            # slice without the lesion would contradict the draft.
            index = self._report_image(items, domain, len(images))
            modality = images[index].instance.modality
            prompt = report_generation_prompt(modality, self.language, placeholder=self.placeholder)
            plain = parse_plain_report(self.client.ask(prompt, *pngs[index]))
            seen_there = {i.finding_code for i in items if i.index == index and i.finding_code}
            planned.append(PlannedRequest("report_generation", index, prompt))
            if plain.findings or plain.impression:
                languages.append(plain.language)
        timings["inference_ms"] = (time.perf_counter() - t0) * 1000
        timings["images"] = float(len(images))
        timings["requests"] = float(len(planned))
        t0 = time.perf_counter()
        written = Counter(languages).most_common(1)[0][0] if languages else self.language
        result = self._compose(domain, images, items, readings, written, plain)
        result.notes = self._notes(readings, languages, domain, plain, seen_there, result)
        result.timings_ms = {**timings, "compose_ms": (time.perf_counter() - t0) * 1000}
        return result

    def _ask_all(
        self,
        planned: list[PlannedRequest],
        pngs: list[tuple[bytes, dict[str, object] | None]],
        workers: int,
    ) -> list[str]:
        """Every planned request's answer, in order. One refused or unreachable request decides
        the draft: after it no further request is sent (those in flight finish)."""
        failed = threading.Event()

        def ask(request: PlannedRequest) -> str | None:
            if failed.is_set():
                return None
            try:
                return self.client.ask(request.prompt, *pngs[request.image])
            except BaseException:
                failed.set()
                raise

        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(ask, r) for r in planned]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]  # type: ignore[misc]
        return [f.result() or "" for f in futures]

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

    def _render(self, image: ReadImage) -> tuple[bytes, dict[str, object] | None]:
        """The PNG sent with every prompt about this image, and the body's extra fields."""
        rendered = self._png(image)
        extra: dict[str, object] | None = None
        spacing = image.frame.pixel_spacing_mm
        if self.settings.mllm_send_pixel_spacing and spacing is not None:
            # Per pixel of the image as sent (it may be downscaled).
            extra = {"pixel_spacing_mm": [spacing[0] * rendered.scale, spacing[1] * rendered.scale]}
        return rendered.png, extra

    # -- reading the answers about one image ----------------------------------------------
    def _read_answer(
        self, reading: _ImageReading, request: PlannedRequest, answer: GroundedAnswer
    ) -> None:
        index = request.image
        # A grounding answer that grounds nothing ("cannot be located") is a refusal, not report
        # text; its sentences stay out of the draft.
        any_grounded = any(
            n.kind != "unknown" and any(b.pixel is not None for b in n.boxes)
            for s in answer.segments
            for n in s.names
        )
        for segment in answer.segments:
            language = detect_language(segment.text) if segment.text else answer.language
            grounded = False
            for name in segment.names:
                if name.kind == "unknown":
                    reading.unknown_names.append(name.text)
                    continue
                usable = [b for b in name.boxes if b.pixel is not None]
                reading.unusable_boxes += len(name.boxes) - len(usable)
                if not usable:
                    continue
                grounded = True
                assert name.code is not None
                if name.kind == "finding":
                    for box in usable:
                        assert box.pixel is not None
                        reading.items.append(
                            _Item(
                                index,
                                "",  # its region: decided once the image's regions are known
                                name.code,
                                box.pixel,
                                segment.text,
                                language,
                                box.flag,
                                lesion=True,
                            )
                        )
                    continue
                affirmed = affirmed_findings(segment.text, language, name.code, None, self.vocab)
                codes: list[str | None] = [*affirmed] or [None]
                for box in usable:  # several boxes for one name: one item (finding) per box
                    assert box.pixel is not None
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
            # A phrase-grounding sentence tied to no known structure is kept as text; a disease
            # prompt's answer without a box ("not seen") says nothing more.
            if not grounded and segment.text and request.kind == "grounding" and any_grounded:
                reading.loose.append((segment.text, language))

    def _resolved(self, reading: _ImageReading) -> list[_Item]:
        """Lesions placed in their regions; a lesion's own box replaces its region's box."""
        regions: dict[str, PixelBox] = {}
        for item in reading.items:
            if not item.lesion and (
                item.region_code not in regions
                or _area(item.box) > _area(regions[item.region_code])
            ):
                regions[item.region_code] = item.box
        lesions: list[_Item] = []
        for item in reading.items:
            if item.lesion:
                assert item.finding_code is not None
                allowed = self.vocab.finding(item.finding_code).regions
                item.region_code = self._lesion_region(item, allowed, regions)
                lesions.append(item)
        located = {(i.region_code, i.finding_code) for i in lesions}
        kept = [
            i
            for i in reading.items
            if not i.lesion
            and (i.finding_code is None or (i.region_code, i.finding_code) not in located)
        ]
        reading.items = kept + lesions
        return reading.items

    def _lesion_region(
        self, item: _Item, allowed: tuple[str, ...], regions: dict[str, PixelBox]
    ) -> str:
        """The region a lesion lies in: named in its sentence, else the allowed region whose box
        holds the lesion's centre, else the first allowed one."""
        named = mentioned_region(item.text, item.language, allowed, self.vocab)
        if named:
            return named
        box = item.box
        cx, cy = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
        for code in allowed:
            if code in regions and _contains(regions[code], cx, cy):
                return code
        return allowed[0]

    def _domain(self, modality: str | None, plan: StudyPlan, items: list[_Item]) -> str:
        if modality in XRAY_DOMAIN:
            return XRAY_DOMAIN[modality]
        candidates = [d.code for d in plan.domains]
        if len(candidates) == 1:
            return candidates[0]
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
        written: Language,
        plain: PlainReport | None,
    ) -> DraftResult:
        in_domain = {r.code for r in self.vocab.regions_for(domain)}
        items = [i for i in items if i.region_code in in_domain]
        # Normal regions, each on the image where its boxes are largest, with every box it has
        # there (an abnormal region is reported through its finding, so its box is not needed).
        per_image: dict[str, dict[int, list[_Item]]] = {}
        for item in items:
            if item.finding_code is None:
                per_image.setdefault(item.region_code, {}).setdefault(item.index, []).append(item)
        best_region: list[tuple[str, _Item]] = []
        for code, by_index in per_image.items():
            distinct = [_distinct(group) for group in by_index.values()]
            chosen = max(distinct, key=lambda group: sum(_area(i.box) for i in group))
            best_region += [(code, i) for i in chosen]
        # MedRegA gives no scores: a lesion's key image is where its box is largest.
        findings = merge_across_slices(
            [i for i in items if i.finding_code is not None],
            slice_of=lambda i: i.index,
            kind_of=lambda i: i.finding_code or "",
            box_of=lambda i: (i.box.x1, i.box.y1, i.box.x2, i.box.y2),
            rank=lambda i: _area(i.box),
        )
        located_regions = [
            LocatedRegion(code, images[i.index].ref, i.box, None) for code, i in best_region
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
        by_key.update({(code, None, i.box): i for code, i in best_region})
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
        sentences = self._merge_shared_sentences(composed.sentences, written)
        # Sentences grounded in no known structure are kept (both languages: the model's words)
        # at the end of the findings section, so nothing the model said is lost.
        loose = [text for r in readings for text, _ in r.loose]
        end = sum(1 for s in sentences if s.section == "findings")
        for offset, text in enumerate(dict.fromkeys(loose)):
            sentences.insert(end + offset, ReportSentence("findings", text, text, []))
        if plain is not None and self._agrees(plain, domain, composed.findings):
            sentences = self._plain_impression(sentences, plain)
        return DraftResult(
            domain=domain,
            applicable=True,
            reason=None,
            model_name=self.model_name,
            model_version=self.model_version,
            backend="mllm",
            findings=composed.findings,
            sentences=sentences,
        )

    def _agrees(self, plain: PlainReport, domain: str, findings: list[RegionFindingResult]) -> bool:
        """Whether the plain report's impression affirms exactly the findings the draft holds:
        only then may it stand beside the vocabulary's impression in the other language."""
        if not plain.impression:
            return False
        said = set(affirmed_in_domain(plain.impression, plain.language, domain, self.vocab))
        return said == {f.finding_code for f in findings if f.finding_code}

    @staticmethod
    def _plain_impression(
        sentences: list[ReportSentence], plain: PlainReport
    ) -> list[ReportSentence]:
        """The model's impression, in the language it wrote, pointing at every finding the
        vocabulary's impression lines pointed at; the other language keeps those lines."""
        impressions = [s for s in sentences if s.section == "impression"]
        own: Language = plain.language
        other: Language = "zh" if own == "en" else "en"
        joiner = "" if other == "zh" else " "
        ordinals = sorted({o for s in impressions for o in s.finding_ordinals})
        merged = ReportSentence("impression", "", "", ordinals)
        setattr(merged, own, plain.impression)
        setattr(merged, other, joiner.join(getattr(s, other) for s in impressions))
        return [s for s in sentences if s.section != "impression"] + [merged]

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

    def _notes(
        self,
        readings: list[_ImageReading],
        languages: list[Language],
        domain: str,
        plain: PlainReport | None,
        seen_there: set[str],
        result: DraftResult,
    ) -> list[str]:
        notes: list[str] = []
        names = {"en": "English", "zh": "Chinese"}
        other = "zh" if self.language == "en" else "en"
        if any(language != self.language for language in languages):
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
        if plain is not None:
            text = f"{plain.findings} {plain.impression}"
            said = affirmed_in_domain(text, plain.language, domain, self.vocab)
            located = {f.finding_code for f in result.findings}
            missing = [self.vocab.finding(c).name(self.language) for c in said if c not in located]
            if missing:
                notes.append(
                    f"{self.model_name}'s plain report mentions {', '.join(missing)}, which no "
                    "grounded answer located (no box in the draft): check the image"
                )
            # The impression of one image disagreeing with what was grounded on that image is the
            # model contradicting itself; one that leaves out lesions of other slices is not (it
            # is then simply not used: both languages must say the same).
            impression = set(
                affirmed_in_domain(plain.impression, plain.language, domain, self.vocab)
            )
            if plain.impression and impression != seen_there:
                notes.append(
                    f"{self.model_name}'s own impression disagrees with its grounded findings on "
                    f"the same image and was not used: {plain.impression[:300]!r}"
                )
        return notes

    # -- interactive region tasks ---------------------------------------------------------
    def locate(self, image: InstanceInput, frame: int, query: str) -> LocateAnswer:
        read = read_frame(image, frame)
        language = detect_language(query)
        prompt = detection_prompt(
            [query], image.modality, language, scale=self.scale, placeholder=self.placeholder
        )
        answer = self.client.ask(prompt, self._png(read).png)
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
        prompt = recognition_prompt(
            text_box, image.modality, self.language, scale=self.scale, placeholder=self.placeholder
        )
        name = parse_name_answer(self.client.ask(prompt, self._png(read).png), self.vocab)
        if name.kind == "region" and name.code is not None:
            region = self.vocab.region(name.code)
            return IdentifyAnswer(region.code, region.en, region.zh, None)
        return IdentifyAnswer(None, name.text, name.text, None)
