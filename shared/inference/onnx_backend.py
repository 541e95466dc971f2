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
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom import dcmread

from shared.dicom.pixels import DecodedFrame, frames_from_dataset
from shared.inference.backend import IdentifyAnswer, InstanceInput, LocateAnswer, StudyInput
from shared.inference.contract import DraftResult, ImageRef, PixelBox
from shared.inference.onnx_session import create_session
from shared.inference.reference_onnx import (
    UNSUPPORTED,
    ImagePrediction,
    LesionPrediction,
    ReferenceModel,
)
from shared.inference.report_composer import LocatedFinding, LocatedRegion, compose_report
from shared.inference.study_images import NotApplicable, ReadImage, read_images, select_images
from shared.vocab import Vocab, load_vocab

log = logging.getLogger(__name__)

MODEL_NAME = "medrega-ref"
BATCH_SIZE = 16
# Lesions on slices at most this far apart, overlapping at least this much, are one finding.
MERGE_SLICE_GAP = 2
MERGE_MIN_IOU = 0.2


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


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
        timings: dict[str, float] = {}
        started = time.perf_counter()
        try:
            model = self.model
            timings["load_ms"] = (time.perf_counter() - started) * 1000
            t0 = time.perf_counter()
            images = read_images(select_images(study, self._supported_modalities, MODEL_NAME))
            timings["read_ms"] = (time.perf_counter() - t0) * 1000
            predictions = self._predict(model, images, timings)
            domain = self._domain(images, predictions)
            t0 = time.perf_counter()
            regions = self.located_regions(images, predictions)
            findings = self.located_findings(images, predictions)
            composed = compose_report(self.vocab, domain, regions, findings)
            timings["compose_ms"] = (time.perf_counter() - t0) * 1000
        except NotApplicable as exc:
            return DraftResult(
                domain=UNSUPPORTED,
                applicable=False,
                reason=str(exc),
                model_name=MODEL_NAME,
                model_version=self._model.info.model_version if self._model else "",
                backend="onnx",
                timings_ms=timings,
            )
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

    def _predict(
        self, model: ReferenceModel, images: list[ReadImage], timings: dict[str, float]
    ) -> list[ImagePrediction]:
        predictions: list[ImagePrediction] = []
        preprocess_s = infer_s = 0.0
        for start in range(0, len(images), BATCH_SIZE):
            chunk = images[start : start + BATCH_SIZE]
            t0 = time.perf_counter()
            prepared = [model.preprocess(im.frame.pixels, *im.frame.window) for im in chunk]
            batch = np.stack([x for x, _ in prepared])[:, None]
            t1 = time.perf_counter()
            predictions.extend(model.predict_preprocessed(batch, [t for _, t in prepared]))
            infer_s += time.perf_counter() - t1
            preprocess_s += t1 - t0
        timings["preprocess_ms"] = preprocess_s * 1000
        timings["inference_ms"] = infer_s * 1000
        timings["images"] = float(len(images))
        return predictions

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
        detections.sort(key=lambda d: -d[0].score)
        clusters: list[list[tuple[LesionPrediction, int]]] = []
        for lesion, index in detections:
            for cluster in clusters:
                if cluster[0][0].finding_code == lesion.finding_code and any(
                    abs(index - other_index) <= MERGE_SLICE_GAP
                    and _iou(lesion.box, other.box) >= MERGE_MIN_IOU
                    for other, other_index in cluster
                ):
                    cluster.append((lesion, index))
                    break
            else:
                clusters.append([(lesion, index)])
        findings = []
        for cluster in clusters:
            lesion, index = cluster[0]  # highest score: the key image
            spacing = images[index].frame.pixel_spacing_mm
            size = None
            if spacing is not None:
                x1, y1, x2, y2 = lesion.box
                size = max((x2 - x1) * spacing[1], (y2 - y1) * spacing[0])
            assert lesion.region_code is not None
            findings.append(
                LocatedFinding(
                    lesion.finding_code,
                    lesion.region_code,
                    images[index].ref,
                    PixelBox(*lesion.box),
                    lesion.score,
                    size,
                )
            )
        return findings

    # -- interactive region tasks ---------------------------------------------------------
    def _frame(self, image: InstanceInput, frame: int) -> DecodedFrame:
        frames = frames_from_dataset(dcmread(image.path))
        if not 1 <= frame <= len(frames):
            raise ValueError(f"frame {frame} out of range 1..{len(frames)}")
        return frames[frame - 1]

    def resolve_region(self, query: str) -> str | None:
        """A region code for an English or Chinese name or synonym (case-insensitive)."""
        wanted = query.strip().lower()
        for region in self.vocab.regions:
            names = {region.code, region.en, region.zh, *region.synonyms_en, *region.synonyms_zh}
            if wanted in {n.lower() for n in names}:
                return region.code
        return None

    def locate(self, image: InstanceInput, frame: int, query: str) -> LocateAnswer:
        code = self.resolve_region(query)
        decoded = self._frame(image, frame)
        ref = ImageRef(image.sop_instance_uid, image.sop_class_uid, frame)
        if code is None:
            return LocateAnswer(None, ref, [], None)
        (prediction,) = self.model.predict([(decoded.pixels, *decoded.window)])
        region = next((r for r in prediction.all_regions if r.code == code), None)
        if region is None or region.box[2] <= region.box[0] or region.box[3] <= region.box[1]:
            return LocateAnswer(code, ref, [], None)
        return LocateAnswer(code, ref, [PixelBox(*region.box)], region.presence)

    def identify(self, image: InstanceInput, frame: int, box: PixelBox) -> IdentifyAnswer:
        decoded = self._frame(image, frame)
        (prediction,) = self.model.predict(
            [(decoded.pixels, *decoded.window)], queries=[[(box.x1, box.y1, box.x2, box.y2)]]
        )
        if not prediction.queries:
            return IdentifyAnswer(None, "", "", None)
        answer = prediction.queries[0]
        region = self.vocab.region(answer.region_code)
        return IdentifyAnswer(region.code, region.en, region.zh, answer.probability)
