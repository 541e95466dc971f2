"""Pre-rendered phantom images in model-input space, cached under model/runs/cache/ (git-ignored).

Each phantom goes through the *serving* preprocessing (shared.inference.preprocess) with the
window the DICOM writer stores and its domain's modality, so training sees exactly what the
worker will feed the model; site variations are added per batch (model.augment).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from model.augment import MODALITY
from model.hard_abdomen import generate_hard_image, hard_seeds
from model.labels import FINDING_INDEX, REGION_CODES, REGION_INDEX
from model.phantoms.generator import generate_image
from model.phantoms.splits import Split, seeds
from model.phantoms.types import DOMAINS, PhantomImage
from shared.inference.preprocess import LetterboxTransform, preprocess

MAX_LESIONS = 4
CACHE_DIR = Path(__file__).resolve().parent / "runs" / "cache"


@dataclass
class Encoded:
    image: np.ndarray  # (S, S) uint8
    domain: int
    region_boxes: np.ndarray  # (R, 4) normalised model frame
    region_present: np.ndarray  # (R,) bool
    lesion_boxes: np.ndarray  # (L, 4)
    lesion_classes: np.ndarray  # (L,) int16, -1 = none
    abnormal: np.ndarray  # (R,) bool
    findings: np.ndarray  # (F,) bool
    content: np.ndarray  # (4,) int16 x1, y1, x2, y2: where the image sits in the letterbox


def encode(img: PhantomImage, domain_index: int, size: int) -> Encoded:
    modality = MODALITY[DOMAINS[domain_index]]
    x, t = preprocess(img.pixels, img.window[0], img.window[1], size, modality)
    return encode_targets(img, domain_index, (x * 255 + 0.5).astype(np.uint8), t)


def encode_targets(
    img: PhantomImage, domain_index: int, image_u8: np.ndarray, t: LetterboxTransform
) -> Encoded:
    r = len(REGION_CODES)
    boxes = np.zeros((r, 4), np.float32)
    present = np.zeros(r, bool)
    for reg in img.regions:
        i = REGION_INDEX[reg.code]
        boxes[i] = t.to_model_normalised(np.array(reg.box))
        present[i] = True
    lboxes = np.zeros((MAX_LESIONS, 4), np.float32)
    lcls = np.full(MAX_LESIONS, -1, np.int16)
    abnormal = np.zeros(r, bool)
    findings = np.zeros(len(FINDING_INDEX), bool)
    for j, f in enumerate(img.findings[:MAX_LESIONS]):
        lboxes[j] = t.to_model_normalised(np.array(f.box))
        lcls[j] = FINDING_INDEX[f.code]
        abnormal[REGION_INDEX[f.region_code]] = True
        findings[FINDING_INDEX[f.code]] = True
    x1, y1, x2, y2 = t.content_box
    content = np.array([round(x1), round(y1), round(x2), round(y2)], np.int16)
    return Encoded(
        image_u8, domain_index, boxes, present, lboxes, lcls, abnormal, findings, content
    )


def _work(args: tuple[int, int, int, int]) -> Encoded:
    domain_index, seed, size, max_side = args
    img = generate_image(DOMAINS[domain_index], seed, max_side=max_side)
    return encode(img, domain_index, size)


def build(
    split: Split, per_domain: int, size: int, max_side: int = 384, workers: int = 2
) -> dict[str, np.ndarray]:
    jobs = [
        (d, seed, size, max_side) for seed in seeds(split, per_domain) for d in range(len(DOMAINS))
    ]
    return stack_encoded(_run(_work, jobs, workers))


def _work_hard(args: tuple[int, int, int]) -> Encoded:
    seed, size, max_side = args
    return encode(generate_hard_image(seed, max_side), DOMAINS.index("abd_ct"), size)


def build_hard_abdomen(
    count: int, size: int, max_side: int = 384, workers: int = 2
) -> dict[str, np.ndarray]:
    """`count` extra abdominal CT images (model.hard_abdomen), training split seeds only."""
    jobs = [(seed, size, max_side) for seed in hard_seeds(count)]
    return stack_encoded(_run(_work_hard, jobs, workers))


def _run(fn, jobs: list, workers: int) -> list[Encoded]:
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            return pool.map(fn, jobs, chunksize=64)
    return [fn(j) for j in jobs]


def stack_encoded(items: list[Encoded]) -> dict[str, np.ndarray]:
    """Encoded images → one array per field, as the caches store them."""
    return {
        "image": np.stack([e.image for e in items]),
        "domain": np.array([e.domain for e in items], np.int64),
        "region_boxes": np.stack([e.region_boxes for e in items]),
        "region_present": np.stack([e.region_present for e in items]),
        "lesion_boxes": np.stack([e.lesion_boxes for e in items]),
        "lesion_classes": np.stack([e.lesion_classes for e in items]).astype(np.int64),
        "abnormal": np.stack([e.abnormal for e in items]),
        "findings": np.stack([e.findings for e in items]),
        "content": np.stack([e.content for e in items]),
    }


def load_or_build(
    split: Split | Literal["hard_abd"],
    per_domain: int,
    size: int,
    max_side: int = 384,
    workers: int = 2,
) -> dict[str, np.ndarray]:
    """The cached images of a split (`per_domain` of each domain), or with split 'hard_abd'
    `per_domain` extra abdominal CT images (model.hard_abdomen, training seeds)."""
    # v2: modality-aware preprocessing and content boxes (older caches are not reused)
    path = CACHE_DIR / f"v2-{split}-{per_domain}-{size}-{max_side}.npz"
    if split == "hard_abd":
        return cached_arrays(path, lambda: build_hard_abdomen(per_domain, size, max_side, workers))
    return cached_arrays(path, lambda: build(split, per_domain, size, max_side, workers))


def cached_arrays(
    path: Path, build_arrays: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The arrays stored at `path`, or `build_arrays()` stored there first (written to a
    temporary name and renamed, so an interrupted build leaves no half cache)."""
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    t0 = time.time()
    data = build_arrays()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **data)
    tmp.rename(path)
    print(f"built {path.name}: {len(data['image'])} images in {time.time() - t0:.0f}s", flush=True)
    return data
