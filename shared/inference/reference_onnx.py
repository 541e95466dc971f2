"""Run the reference region-aware model (or any model with the same I/O contract) under ONNX
Runtime and decode its outputs into typed results with boxes in SOURCE pixels.

No torch here: the worker imports this. The contract (input size, label orders, thresholds,
calibration) is read from the ONNX file's metadata_props, never hard-coded.

    model = ReferenceModel.load(path)                       # CPU by default
    preds = model.predict([(pixels, wc, ww, "CT")], queries=[[(x1, y1, x2, y2)]])

Each image is (physical pixels, window center, window width[, DICOM Modality]); without a
modality the pixels are taken as display values (see shared.inference.preprocess).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from shared.inference.onnx_session import session_options
from shared.inference.preprocess import (
    LEGACY_NORMALISATION,
    NORMALISATION,
    LetterboxTransform,
    preprocess,
)
from shared.vocab import load_vocab

SourceBox = tuple[float, float, float, float]
ImageInput = tuple[np.ndarray, float, float] | tuple[np.ndarray, float, float, str | None]
UNSUPPORTED = "unsupported"
# Below this many pixels on a side an image carries no anatomy worth drafting from (icons,
# dose grids, thumbnails): refused before the network is asked.
MIN_SOURCE_PIXELS = 64


class ModelContractError(ValueError):
    """The ONNX file lacks metadata or tensors this runtime needs."""


@dataclass(frozen=True)
class ModelInfo:
    model_version: str
    input_size: int
    domain_outputs: tuple[str, ...]  # 4 domains + 'unsupported'
    region_codes: tuple[str, ...]
    finding_codes: tuple[str, ...]
    vocab_version: str
    training_commit: str
    ood_threshold: float
    lesion_threshold: float  # the operating point of a domain not in lesion_thresholds
    lesion_thresholds: dict[str, float]  # per domain: each has its own precision/recall trade
    presence_threshold: float
    temperatures: dict[str, float]
    preprocessing: dict[str, object]
    raw: dict[str, str]

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> ModelInfo:
        required = ("model_version", "input_size", "domain_outputs", "region_codes")
        missing = [k for k in required if k not in meta]
        if missing:
            raise ModelContractError(f"ONNX metadata lacks {missing}")
        return cls(
            model_version=meta["model_version"],
            input_size=int(meta["input_size"]),
            domain_outputs=tuple(json.loads(meta["domain_outputs"])),
            region_codes=tuple(json.loads(meta["region_codes"])),
            finding_codes=tuple(json.loads(meta.get("finding_codes", "[]"))),
            vocab_version=meta.get("vocab_version", ""),
            training_commit=meta.get("training_commit", ""),
            ood_threshold=float(meta.get("ood_threshold", 0.5)),
            lesion_threshold=_threshold("lesion_threshold", meta.get("lesion_threshold", 0.5)),
            lesion_thresholds=_domain_thresholds(meta),
            presence_threshold=float(meta.get("presence_threshold", 0.5)),
            temperatures=json.loads(meta.get("calibration_temperatures", "{}")),
            preprocessing=json.loads(meta.get("preprocessing", "{}")),
            raw=dict(meta),
        )

    def lesion_threshold_for(self, domain: str) -> float:
        return self.lesion_thresholds.get(domain, self.lesion_threshold)


def _threshold(name: str, value: str | float) -> float:
    """A score threshold outside (0, 1) would report every detection or none, silently: a
    broken contract. The one check for every writer of the metadata (export, operating points)."""
    threshold = float(value)
    if not 0.0 < threshold < 1.0:
        raise ModelContractError(f"{name} outside (0, 1): {threshold}")
    return threshold


def _domain_thresholds(meta: dict[str, str]) -> dict[str, float]:
    """`lesion_thresholds` (JSON, domain → score); a domain the model does not output is a
    broken contract, not something to guess around."""
    raw = json.loads(meta.get("lesion_thresholds", "{}"))
    unknown = sorted(set(raw) - set(json.loads(meta["domain_outputs"])))
    if unknown:
        raise ModelContractError(f"lesion_thresholds names domains the model lacks: {unknown}")
    return {str(d): _threshold(f"lesion_thresholds[{d}]", v) for d, v in raw.items()}


@dataclass(frozen=True)
class RegionPrediction:
    code: str
    presence: float  # probability the region is visible
    box: SourceBox  # Text→Region box, source pixels
    abnormal: float  # probability the region holds a finding


@dataclass(frozen=True)
class LesionPrediction:
    finding_code: str
    region_code: str | None  # the region it lies in (from the predicted region boxes)
    score: float  # calibrated probability of a true lesion
    box: SourceBox


@dataclass(frozen=True)
class QueryPrediction:
    box: SourceBox
    region_code: str
    probability: float
    probabilities: dict[str, float]


@dataclass
class ImagePrediction:
    domain: str  # one of the 4 domains, or 'unsupported'
    domain_probs: dict[str, float]
    unsupported_reason: str | None
    regions: list[RegionPrediction]  # the predicted domain's regions, presence ≥ threshold
    finding_probs: dict[str, float]  # image-level, the predicted domain's findings
    lesions: list[LesionPrediction]  # score ≥ the model's lesion threshold
    queries: list[QueryPrediction]
    transform: LetterboxTransform | None
    all_regions: list[RegionPrediction] = field(default_factory=list)  # every region, any presence

    @property
    def supported(self) -> bool:
        return self.domain != UNSUPPORTED

    def region(self, code: str) -> RegionPrediction | None:
        for r in self.all_regions:
            if r.code == code:
                return r
        return None


class ReferenceModel:
    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        meta = session.get_modelmeta().custom_metadata_map
        self.info = ModelInfo.from_metadata(meta)
        names = {i.name for i in session.get_inputs()}
        if names != {"image", "query_boxes"}:
            raise ModelContractError(f"expected inputs image, query_boxes; got {sorted(names)}")
        self.output_names = [o.name for o in session.get_outputs()]
        vocab = load_vocab()
        self._domain_regions = {
            d.code: {r.code for r in vocab.regions_for(d.code)} for d in vocab.domains
        }
        self._domain_findings = {
            d.code: {f.code for f in vocab.findings_for(d.code)} for d in vocab.domains
        }
        self._finding_regions = {f.code: f.regions for f in vocab.findings}
        # the intensity rule the model was trained with; older files name none
        rule = str(self.info.preprocessing.get("normalisation", LEGACY_NORMALISATION))
        if rule not in (NORMALISATION, LEGACY_NORMALISATION):
            raise ModelContractError(f"model wants preprocessing {rule!r}, unknown here")
        self.normalisation = rule

    @classmethod
    def load(
        cls,
        path: str | Path,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int | None = None,
    ) -> ReferenceModel:
        """A plain session; the worker may build its own (shared.inference.onnx_session) and
        pass it to the constructor instead."""
        options = session_options(threads)  # as the services' sessions, without their cache
        session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
        return cls(session)

    # -- raw ---------------------------------------------------------------------------------
    def preprocess(
        self, pixels: np.ndarray, center: float, width: float, modality: str | None = None
    ) -> tuple[np.ndarray, LetterboxTransform]:
        return preprocess(pixels, center, width, self.info.input_size, modality, self.normalisation)

    def run_raw(
        self, batch: np.ndarray, query_boxes: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """batch (N, 1, S, S) float32; query_boxes (N, Q, 4) normalised model frame (a dummy
        box per image when None). Returns every output by name."""
        n = batch.shape[0]
        if query_boxes is None:
            query_boxes = np.tile(np.array([[[0.25, 0.25, 0.75, 0.75]]], np.float32), (n, 1, 1))
        outs = self.session.run(
            None,
            {
                "image": np.ascontiguousarray(batch, np.float32),
                "query_boxes": np.ascontiguousarray(query_boxes, np.float32),
            },
        )
        return dict(zip(self.output_names, outs, strict=True))

    # -- decoded -----------------------------------------------------------------------------
    def predict(
        self,
        images: Sequence[ImageInput],
        queries: Sequence[Sequence[SourceBox]] | None = None,
    ) -> list[ImagePrediction]:
        """[(physical pixels, window center, window width[, modality])] → decoded predictions.
        `queries` holds Region→Text boxes in source pixels, per image (may be empty lists)."""
        results: list[ImagePrediction | None] = [None] * len(images)
        batch, transforms, keep = [], [], []
        for i, item in enumerate(images):
            prepared = self.prepare(item)
            if isinstance(prepared, ImagePrediction):
                results[i] = prepared
                continue
            x, t = prepared
            batch.append(x)
            transforms.append(t)
            keep.append(i)
        if keep:
            q_src = [list(queries[i]) if queries else [] for i in keep]
            decoded = self.predict_preprocessed(np.stack(batch)[:, None], transforms, q_src)
            for i, pred in zip(keep, decoded, strict=True):
                results[i] = pred
        return [r for r in results if r is not None]

    def prepare(self, item: ImageInput) -> tuple[np.ndarray, LetterboxTransform] | ImagePrediction:
        """One image → its model input and transform, or the refusal `predict` answers for it
        (a matrix too small to read)."""
        pixels, center, width = item[0], item[1], item[2]
        modality = item[3] if len(item) > 3 else None
        rows, cols = np.asarray(pixels).shape[:2]
        if min(rows, cols) < MIN_SOURCE_PIXELS:
            return _refused(f"matrix {rows}x{cols} below {MIN_SOURCE_PIXELS} px")
        return self.preprocess(pixels, center, width, modality)

    def predict_preprocessed(
        self,
        batch: np.ndarray,
        transforms: Sequence[LetterboxTransform],
        queries: Sequence[Sequence[SourceBox]] | None = None,
    ) -> list[ImagePrediction]:
        n = batch.shape[0]
        nq = max([len(q) for q in queries] if queries else [0]) or 1
        qn = np.tile(np.array([0.25, 0.25, 0.75, 0.75], np.float32), (n, nq, 1))
        for i, qs in enumerate(queries or []):
            if qs:
                qn[i, : len(qs)] = transforms[i].to_model_normalised(np.array(qs, np.float64))
        out = self.run_raw(batch, qn)
        return [
            self._decode(out, i, transforms[i], list(queries[i]) if queries else [])
            for i in range(n)
        ]

    def _decode(
        self, out: dict[str, np.ndarray], i: int, t: LetterboxTransform, queries: list[SourceBox]
    ) -> ImagePrediction:
        info = self.info
        probs = out["domain_probs"][i]
        domain_probs = {d: float(p) for d, p in zip(info.domain_outputs, probs, strict=True)}
        n_dom = len(info.domain_outputs) - 1
        best = int(np.argmax(probs[:n_dom]))
        reason = None
        if int(np.argmax(probs)) == n_dom:
            reason = "classified as unlike any supported domain"
        elif probs[best] < info.ood_threshold:
            reason = f"domain confidence {probs[best]:.2f} below {info.ood_threshold:.2f}"
        domain = UNSUPPORTED if reason else info.domain_outputs[best]

        def src(box: np.ndarray) -> SourceBox:
            b = t.clip_to_source(t.from_model_normalised(box))
            return (float(b[0]), float(b[1]), float(b[2]), float(b[3]))

        all_regions = [
            RegionPrediction(
                code=code,
                presence=float(out["region_presence"][i, r]),
                box=src(out["region_boxes"][i, r]),
                abnormal=float(out["region_abnormal"][i, r]),
            )
            for r, code in enumerate(info.region_codes)
        ]
        allowed_regions = self._domain_regions.get(domain, set())
        allowed_findings = self._domain_findings.get(domain, set())
        regions = [
            r
            for r in all_regions
            if r.code in allowed_regions and r.presence >= info.presence_threshold
        ]
        lesion_threshold = info.lesion_threshold_for(domain)
        lesions = []
        for box, score, cls in zip(
            out["lesion_boxes"][i], out["lesion_scores"][i], out["lesion_classes"][i], strict=True
        ):
            code = info.finding_codes[int(cls)]
            if score < lesion_threshold or code not in allowed_findings:
                continue
            sbox = src(box)
            lesions.append(
                LesionPrediction(code, self._region_of(code, sbox, all_regions), float(score), sbox)
            )
        query_preds = []
        for q, qbox in enumerate(queries):
            p = out["query_region_probs"][i, q]
            k = int(np.argmax(p))
            query_preds.append(
                QueryPrediction(
                    box=tuple(float(v) for v in qbox),  # type: ignore[arg-type]
                    region_code=info.region_codes[k],
                    probability=float(p[k]),
                    probabilities={c: float(v) for c, v in zip(info.region_codes, p, strict=True)},
                )
            )
        return ImagePrediction(
            domain=domain,
            domain_probs=domain_probs,
            unsupported_reason=reason,
            regions=regions,
            finding_probs={
                c: float(p)
                for c, p in zip(info.finding_codes, out["finding_probs"][i], strict=True)
                if c in allowed_findings
            },
            lesions=lesions,
            queries=query_preds,
            transform=t,
            all_regions=all_regions,
        )

    def _region_of(
        self, finding_code: str, box: SourceBox, regions: list[RegionPrediction]
    ) -> str | None:
        """The candidate region (from the vocabulary) that best contains the lesion."""
        candidates = [r for r in regions if r.code in self._finding_regions.get(finding_code, ())]
        if not candidates:
            return None
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2

        def score(r: RegionPrediction) -> tuple[float, float]:
            x1, y1, x2, y2 = r.box
            inside = float(x1 <= cx <= x2 and y1 <= cy <= y2)
            return (inside * r.presence, r.abnormal)

        return max(candidates, key=score).code


def _refused(reason: str) -> ImagePrediction:
    return ImagePrediction(
        domain=UNSUPPORTED,
        domain_probs={},
        unsupported_reason=reason,
        regions=[],
        finding_probs={},
        lesions=[],
        queries=[],
        transform=None,
    )
