"""The `onnx` backend: the bundled reference model under ONNX Runtime, study by study.

"Global observation, then local focus", at study level:
1. pick the images to read — X-ray: the frontal views; CT/MR: every slice of the main axial
   series (localizers and secondary captures left out);
2. decode and preprocess them, run the model in batches;
3. decide the study's domain (or refuse it as unsupported) from the per-image answers;
4. aggregate: each region on the image where it is seen best; lesions merged across neighbouring
   slices into one study finding, on its key image (highest score), box in that image's pixels;
5. compose the grounded EN/ZH report from the vocabulary.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset

from shared.dicom.pixels import DecodedFrame, PixelDataUnsupported, frames_from_dataset
from shared.inference.backend import IdentifyAnswer, InstanceInput, LocateAnswer, StudyInput
from shared.inference.grounded_text import region_code
from shared.inference.onnx_session import GPU_PROVIDERS, cpu_threads, create_session
from shared.inference.preprocess import LetterboxTransform
from shared.inference.reference_onnx import (
    UNSUPPORTED,
    ImagePrediction,
    LesionPrediction,
    ReferenceModel,
    SourceBox,
)
from shared.inference.report_composer import LocatedFinding, LocatedRegion, compose_report
from shared.inference.study_images import (
    NotApplicable,
    ReadImage,
    image_order,
    merge_across_slices,
    position_of,
    read_frame,
    read_images,
    select_images,
)
from shared.reports.domain import DraftResult, ImageRef, PixelBox
from shared.vocab import Vocab, load_vocab

log = logging.getLogger(__name__)

MODEL_NAME = "medrega-ref"
BATCH_SIZE = 16
# Instances decoded ahead of the model in a streamed read (one chunk waits while one is read).
STREAM_CHUNK = 16
# Frames the interactive tools keep, as model inputs (256 KB each at 256²): a radiologist's clicks
# on the image in front of them skip decoding and preprocessing (~70 ms for a 3000² X-ray here).
RECENT_FRAMES = 32


@dataclass(frozen=True)
class _Read:
    """One study's images and their model inputs. `chunks` yields the inputs in image order;
    `images` is complete once `chunks` is exhausted (a streamed series fills it as it goes)."""

    """One study's images, decoded, and their model inputs."""

    images: list[ReadImage]
    chunks: Iterator[list[tuple[np.ndarray, LetterboxTransform]]]
    timings: dict[str, float]


# An instance's frames (pixels dropped) with their model inputs, or why it could not be read.
# One interactive frame: its model input and transform, or the model's refusal of it.
PreparedInput = tuple[np.ndarray, LetterboxTransform] | ImagePrediction
_Prepared = list[tuple[DecodedFrame, tuple[np.ndarray, LetterboxTransform]]] | Exception
_NO_PIXELS = np.zeros((0, 0), np.float32)


def _decode_and_prepare(model: ReferenceModel, instance: InstanceInput, ds: Dataset) -> _Prepared:
    try:
        frames = frames_from_dataset(ds)
        prepared = [
            (
                replace(frame, pixels=_NO_PIXELS),  # what the answer needs: ref, spacing
                model.preprocess(frame.pixels, *frame.window, instance.modality),
            )
            for frame in frames
        ]
    except Exception as exc:  # raised again for this study only, as read_images does
        return exc
    finally:
        if "PixelData" in ds:
            del ds.PixelData  # read from disk on demand: don't keep the bytes of every slice
    return prepared


def _batches(
    chunks: Iterator[list[tuple[np.ndarray, LetterboxTransform]]], size: int
) -> Iterator[list[tuple[np.ndarray, LetterboxTransform]]]:
    """The chunks' items regrouped into batches of `size` (the last may be smaller)."""
    batch: list[tuple[np.ndarray, LetterboxTransform]] = []
    for chunk in chunks:
        for item in chunk:
            batch.append(item)
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def _read_ahead(
    pool: ThreadPoolExecutor,
    studies: Sequence[StudyInput],
    read: Callable[[StudyInput], _Read | Exception],
) -> Iterator[_Read | Exception]:
    """`read` of each study in order, running on the pool at most one study per thread ahead of
    the consumer (bounded memory: a decoded 3000 × 3000 X-ray is ~36 MB)."""
    ahead = cpu_threads()
    window: deque[Future[_Read | Exception]] = deque()
    pending = iter(studies)
    for study in pending:
        window.append(pool.submit(read, study))
        if len(window) >= ahead:
            break
    while window:
        result = window.popleft().result()
        following = next(pending, None)
        if following is not None:
            window.append(pool.submit(read, following))
        yield result


class OnnxBackend:
    """Thread-safe; one per worker process (the session is created lazily on first use)."""

    name = "onnx"

    def __init__(
        self,
        model_path: Path,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        *,
        require_gpu: bool = False,
        cache_dir: Path | None = None,
        vocab: Vocab | None = None,
    ) -> None:
        self.model_path = model_path
        self.providers = list(providers)
        self.require_gpu = require_gpu
        self.cache_dir = cache_dir
        self.vocab = vocab or load_vocab()
        self._model: ReferenceModel | None = None
        self._lock = threading.Lock()
        self._supported_modalities = {m for d in self.vocab.domains for m in d.modalities}
        # Locate/Identify: the last few decoded frames. A radiologist asks several questions of
        # the image in view, and decoding a 3000 × 3000 X-ray costs more than the model (about
        # 90 of 130 ms on the development machine). A stored file is never rewritten under its
        # name (the listener's rule), so (path, frame) identifies the pixels.
        self._recent_frames: OrderedDict[tuple[str, int], PreparedInput] = OrderedDict()
        self._recent_lock = threading.Lock()
        self._reader_pool: ThreadPoolExecutor | None = None  # decode + preprocess (drafts)

    @property
    def model(self) -> ReferenceModel:
        with self._lock:
            if self._model is None:
                session = create_session(
                    self.model_path,
                    self.providers,
                    require_gpu=self.require_gpu,
                    cache_dir=self.cache_dir,
                )
                self._model = ReferenceModel(session)
            return self._model

    @property
    def model_version(self) -> str:
        return self.model.info.model_version

    # -- the draft ------------------------------------------------------------------------
    def draft(self, study: StudyInput) -> DraftResult:
        (result,) = self.draft_iter([study])
        if isinstance(result, Exception):
            raise result
        return result

    def draft_iter(
        self,
        studies: Sequence[StudyInput],
        *,
        between_batches: Callable[[], None] | None = None,
    ) -> Iterator[DraftResult | Exception]:
        """Several studies one after another (a burst's waiting X-rays), each answered as soon as
        the model has seen it, exactly as `draft` answers it alone — 'not applicable' with its
        reason, or an exception that belongs to that study only (the others still get their
        drafts). While the model runs on one study (and the caller stores its draft), the next
        ones are read and preprocessed on a small thread pool: decoding overlaps the model and
        the database instead of queueing behind them. One study alone (a CT series) has its
        instances decoded on the pool.

        `between_batches` is called between two model batches of one study (never after its
        last): the worker drafts X-rays that arrived meanwhile there, so a long CT series does
        not hold the model for its whole duration."""
        started = time.perf_counter()
        model = self.model
        load_ms = (time.perf_counter() - started) * 1000
        pool = self._pool()
        reads: Iterator[_Read | Exception]
        if len(studies) == 1:
            reads = iter([self._read_streamed(model, studies[0], pool)])
        else:
            reads = _read_ahead(pool, studies, lambda study: self._read(model, study, map))
        for read in reads:
            if isinstance(read, Exception):
                yield self._not_applicable(read, {"load_ms": load_ms})
                continue
            timings = {"load_ms": load_ms, **read.timings, "studies": float(len(studies))}
            try:
                predictions = self._infer(model, read, timings, between_batches)
                timings.update(read.timings)  # a streamed read counts its waits as it goes
                yield self._answer(model, read.images, predictions, timings)
            except Exception as exc:
                yield self._not_applicable(exc, timings)

    def _read(
        self,
        model: ReferenceModel,
        study: StudyInput,
        map_: Callable[..., Iterator[Any]],
    ) -> _Read | Exception:
        """One study's images, decoded and preprocessed (or the exception that stopped it)."""
        try:
            t0 = time.perf_counter()
            selected = select_images(study, self._supported_modalities, MODEL_NAME)
            images = read_images(selected, map_)
            t1 = time.perf_counter()

            def prepare(image: ReadImage) -> tuple[np.ndarray, LetterboxTransform]:
                frame = image.frame
                return model.preprocess(frame.pixels, *frame.window, image.instance.modality)

            prepared = list(map_(prepare, images))
            t2 = time.perf_counter()
        except Exception as exc:
            return exc
        timings = {"read_ms": (t1 - t0) * 1000, "preprocess_ms": (t2 - t1) * 1000}
        return _Read(images, iter([prepared]), timings)

    def _read_streamed(
        self, model: ReferenceModel, study: StudyInput, pool: ThreadPoolExecutor
    ) -> _Read | Exception:
        """One study (a CT/MR series of hundreds of slices, or one X-ray) read in chunks of
        STREAM_CHUNK instances, each decoded and preprocessed on the pool (with a GPU model, the
        next chunk while the model reads this one); only the model inputs are kept, not the
        decoded pixels (a 1000-slice CT held ~2.5 GB read whole). `read_ms` is the header selection; `preprocess_ms` is the
        time the model waited for chunks (the part not hidden behind it)."""
        t0 = time.perf_counter()
        try:
            selected = select_images(
                study, self._supported_modalities, MODEL_NAME, defer_pixels=True
            )
        except Exception as exc:
            return exc
        timings = {"read_ms": (time.perf_counter() - t0) * 1000, "preprocess_ms": 0.0}
        images: list[ReadImage] = []
        return _Read(images, self._stream(model, selected, pool, images, timings), timings)

    def _stream(
        self,
        model: ReferenceModel,
        selected: list[tuple[InstanceInput, Dataset]],
        pool: ThreadPoolExecutor,
        images: list[ReadImage],
        timings: dict[str, float],
    ) -> Iterator[list[tuple[np.ndarray, LetterboxTransform]]]:
        groups = [selected[i : i + STREAM_CHUNK] for i in range(0, len(selected), STREAM_CHUNK)]

        def submit(group: list[tuple[InstanceInput, Dataset]]) -> list[Future[_Prepared]]:
            # One task per instance, never a task that waits on others (a 1-thread pool).
            return [pool.submit(_decode_and_prepare, model, i, ds) for i, ds in group]

        # Decode ahead of the model only when the model runs on an accelerator: on the CPU the
        # decoding threads and the model's own threads share the same cores (the e2e bench's CT
        # p95 was 2-3 s worse with read-ahead on 2 cores, and the X-rays drafted between the
        # CT's batches competed with its decoding).
        ahead = bool(GPU_PROVIDERS & set(model.session.get_providers()))
        reasons: list[str] = []
        pending = submit(groups[0]) if groups else []
        try:
            for index, group in enumerate(groups):
                futures = pending if pending else submit(group)
                following = groups[index + 1] if index + 1 < len(groups) else None
                pending = submit(following) if ahead and following is not None else []
                t0 = time.perf_counter()
                outcomes = [future.result() for future in futures]
                timings["preprocess_ms"] += (time.perf_counter() - t0) * 1000
                chunk: list[tuple[ReadImage, int, tuple[np.ndarray, LetterboxTransform]]] = []
                first = index * STREAM_CHUNK  # the group's place in the selection
                for offset, ((instance, ds), outcome) in enumerate(
                    zip(group, outcomes, strict=True)
                ):
                    if isinstance(outcome, PixelDataUnsupported):
                        reasons.append(str(outcome))
                        continue
                    if isinstance(outcome, Exception):
                        raise outcome
                    position = position_of(ds, instance)
                    chunk.extend(
                        (ReadImage(instance, f, position), first + offset, x) for f, x in outcome
                    )
                # As read_images orders them (select_images sorted the selection by position, so
                # the chunks follow one another in that order too).
                chunk.sort(key=lambda entry: image_order((entry[0], entry[1])))
                images.extend(image for image, _, _ in chunk)
                yield [prepared for _, _, prepared in chunk]
        finally:
            for future in pending:
                future.cancel()
        if not images:
            raise NotApplicable(reasons[0] if reasons else "no decodable image")

    def _infer(
        self,
        model: ReferenceModel,
        read: _Read,
        timings: dict[str, float],
        between_batches: Callable[[], None] | None,
    ) -> list[ImagePrediction]:
        predictions: list[ImagePrediction] = []
        infer_s = paused_s = 0.0
        for index, batch_inputs in enumerate(_batches(read.chunks, BATCH_SIZE)):
            if index and between_batches is not None:
                t0 = time.perf_counter()
                between_batches()
                paused_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            batch = np.stack([x for x, _ in batch_inputs])[:, None]
            predictions.extend(model.predict_preprocessed(batch, [t for _, t in batch_inputs]))
            infer_s += time.perf_counter() - t0
        timings["inference_ms"] = infer_s * 1000
        timings["images"] = float(len(read.images))
        if paused_s:
            timings["paused_ms"] = paused_s * 1000  # other jobs drafted between the batches
        return predictions

    def _not_applicable(self, exc: Exception, timings: dict[str, float]) -> DraftResult | Exception:
        if not isinstance(exc, NotApplicable):
            return exc
        return DraftResult(
            domain=UNSUPPORTED,
            applicable=False,
            reason=str(exc),
            model_name=MODEL_NAME,
            model_version=self._model.info.model_version if self._model else "",
            backend="onnx",
            timings_ms=dict(timings),
        )

    def _answer(
        self,
        model: ReferenceModel,
        images: list[ReadImage],
        predictions: list[ImagePrediction],
        timings: dict[str, float],
    ) -> DraftResult:
        domain = self._domain(images, predictions)
        t0 = time.perf_counter()
        regions = self.located_regions(images, predictions)
        findings = self.located_findings(images, predictions)
        composed = compose_report(self.vocab, domain, regions, findings)
        timings["compose_ms"] = (time.perf_counter() - t0) * 1000
        return DraftResult(
            domain=domain,
            applicable=True,
            reason=None,
            model_name=MODEL_NAME,
            model_version=model.info.model_version,
            backend="onnx",
            findings=composed.findings,
            sentences=composed.sentences,
            timings_ms=timings,
        )

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._reader_pool is None:
                self._reader_pool = ThreadPoolExecutor(cpu_threads(), "draft-read")
            return self._reader_pool

    def _domain(self, images: list[ReadImage], predictions: list[ImagePrediction]) -> str:
        votes = Counter(p.domain for p in predictions)
        domain, count = votes.most_common(1)[0]
        if domain == UNSUPPORTED:
            reason = next(p.unsupported_reason for p in predictions if p.unsupported_reason)
            raise NotApplicable(f"{MODEL_NAME}: the images are unlike its training data ({reason})")
        modality = images[0].instance.modality
        info = self.vocab.domain(domain)
        if modality not in info.modalities:
            raise NotApplicable(
                f"{MODEL_NAME} read this {modality} study as {info.en}; refusing to draft"
            )
        return domain

    def located_regions(
        self, images: list[ReadImage], predictions: list[ImagePrediction]
    ) -> list[LocatedRegion]:
        """Each region once, on the image where its presence is highest."""
        best: dict[str, tuple[float, int, tuple[float, float, float, float]]] = {}
        for index, prediction in enumerate(predictions):
            for region in prediction.regions:
                if region.code not in best or region.presence > best[region.code][0]:
                    best[region.code] = (region.presence, index, region.box)
        return [
            LocatedRegion(code, images[index].ref, PixelBox(*box), presence)
            for code, (presence, index, box) in best.items()
            if box[2] > box[0] and box[3] > box[1]
        ]

    def located_findings(
        self, images: list[ReadImage], predictions: list[ImagePrediction]
    ) -> list[LocatedFinding]:
        """Lesions merged across neighbouring slices (same class, overlapping), each on its key
        image: the one where it scores highest; size from the pixel spacing."""
        detections: list[tuple[LesionPrediction, int]] = [
            (lesion, index)
            for index, prediction in enumerate(predictions)
            for lesion in prediction.lesions
            if lesion.region_code is not None
        ]
        key_detections = merge_across_slices(
            detections,
            slice_of=lambda d: d[1],
            kind_of=lambda d: d[0].finding_code,
            box_of=lambda d: d[0].box,
            rank=lambda d: d[0].score,
        )
        findings = []
        for lesion, index in key_detections:
            assert lesion.region_code is not None
            box = PixelBox(*lesion.box)
            findings.append(
                LocatedFinding(
                    lesion.finding_code,
                    lesion.region_code,
                    images[index].ref,
                    box,
                    lesion.score,
                    images[index].extent_mm(box),
                )
            )
        return findings

    # -- interactive region tasks ---------------------------------------------------------
    def _interactive_input(self, image: InstanceInput, frame: int) -> PreparedInput:
        key = (str(image.path), frame)
        with self._recent_lock:
            if key in self._recent_frames:
                self._recent_frames.move_to_end(key)
                return self._recent_frames[key]
        decoded = read_frame(image, frame).frame
        prepared = self.model.prepare((decoded.pixels, *decoded.window, image.modality))
        if not isinstance(prepared, ImagePrediction):
            prepared[0].setflags(write=False)  # shared between requests: nobody may change it
        with self._recent_lock:
            self._recent_frames[key] = prepared
            while len(self._recent_frames) > RECENT_FRAMES:
                self._recent_frames.popitem(last=False)
        return prepared

    def _interactive_prediction(
        self, image: InstanceInput, frame: int, queries: list[SourceBox] | None = None
    ) -> ImagePrediction:
        prepared = self._interactive_input(image, frame)
        if isinstance(prepared, ImagePrediction):
            return prepared  # refused, as `predict` answers for this image
        model_input, transform = prepared
        (prediction,) = self.model.predict_preprocessed(
            model_input[None, None], [transform], [queries or []]
        )
        return prediction

    def locate(self, image: InstanceInput, frame: int, query: str) -> LocateAnswer:
        code = region_code(query, self.vocab)
        prediction = self._interactive_prediction(image, frame)
        ref = ImageRef(image.sop_instance_uid, image.sop_class_uid, frame)
        if code is None:
            return LocateAnswer(None, ref, [], None)
        region = next((r for r in prediction.all_regions if r.code == code), None)
        if region is None or region.box[2] <= region.box[0] or region.box[3] <= region.box[1]:
            return LocateAnswer(code, ref, [], None)
        return LocateAnswer(code, ref, [PixelBox(*region.box)], region.presence)

    def identify(self, image: InstanceInput, frame: int, box: PixelBox) -> IdentifyAnswer:
        prediction = self._interactive_prediction(image, frame, [(box.x1, box.y1, box.x2, box.y2)])
        if not prediction.queries:
            return IdentifyAnswer(None, "", "", None)
        answer = prediction.queries[0]
        region = self.vocab.region(answer.region_code)
        return IdentifyAnswer(region.code, region.en, region.zh, answer.probability)
