"""Validation phantoms as another site would send them, for the calibration (OOD gate, lesion
threshold): source-space variations of the kinds `model.shifts` defines, each with a strength
drawn at random over a range around the evaluation's (own draws, not its fixed values), handed
through the serving preprocessing like any image.

The training augmentations (model.augment) work on cached model inputs and draw their own
ranges; the calibration's copies of those (`calibration.shifted_copies`) let a gate through that
still rejected 13 % of sharpened chest CT slices on the test split (fine-tune ft14, 2026-11-30).
Here each kind is its own group, so the gate can be held to a reject rate per domain and kind
rather than over everything at once, where a rare kind can hide.

Validation seeds only, after the ones the cached validation set uses (`START`): CT and MR at
full resolution as the evaluation renders them; X-rays at most CXR_MAX_SIDE a side (the full
2,000–3,000 px render takes seconds each; every variation is scaled to model pixels anyway).
"""

from __future__ import annotations

import time

import numpy as np

from model import shifts
from model.phantoms.generator import generate_image
from model.phantoms.splits import seeds
from model.phantoms.types import DOMAINS
from model.training_data import CACHE_DIR, cached_arrays, encode_targets, stack_encoded
from shared.inference.preprocess import preprocess

KINDS = ("sharpen", "blur", "noise", "exposure", "contrast", "display")
START = 400  # the cached validation set uses the first 400 seeds of each domain
CXR_MAX_SIDE = 768


def variation(kind: str, rng: np.random.Generator) -> shifts.ShiftFn:
    """One site variation of `kind` with a strength drawn from this module's own range."""
    if kind == "sharpen":
        return shifts.sharpen(float(rng.uniform(0.8, 2.2)))
    if kind == "blur":
        return shifts.blur(float(rng.uniform(0.8, 2.5)))
    if kind == "noise":
        return shifts.noise(float(rng.uniform(0.02, 0.10)))
    if kind == "exposure":
        return shifts.exposure(float(rng.uniform(0.5, 0.9)))
    if kind == "contrast":
        return shifts.contrast(float(np.exp(rng.uniform(-0.7, 0.7))))
    if kind == "display":
        return shifts.display_png
    raise ValueError(f"unknown kind {kind!r}")


def build(per_domain: int, size: int, seed: int = 0, log=print) -> dict[str, np.ndarray]:
    """Model inputs (uint8, like the training cache) and targets of `per_domain` validation
    phantoms per domain under every kind that applies; `kind` indexes KINDS."""
    rng = np.random.default_rng(seed)
    rows, kinds = [], []
    t0 = time.time()
    for di, domain in enumerate(DOMAINS):
        max_side = CXR_MAX_SIDE if domain == "cxr" else None
        for s in seeds("val", per_domain, start=START):
            img = generate_image(domain, s, max_side=max_side)
            for ki, kind in enumerate(KINDS):
                got = variation(kind, rng)(domain, img, rng)
                if got is None:  # e.g. a tone curve on CT numbers
                    continue
                (pixels, c, w, modality), scale = got
                assert scale == 1.0, kind  # no kind here changes the matrix
                x, t = preprocess(pixels, c, w, size, modality)
                rows.append(encode_targets(img, di, (x * 255 + 0.5).astype(np.uint8), t))
                kinds.append(ki)
    data = {**stack_encoded(rows), "kind": np.array(kinds, np.int64)}
    log(f"site copies: {len(kinds)} images in {time.time() - t0:.0f}s")
    return data


def load_or_build(per_domain: int, size: int, log=print) -> dict[str, np.ndarray] | None:
    """The cached site copies; None when the recipe asks for none (`per_domain` 0)."""
    if not per_domain:
        return None
    path = CACHE_DIR / f"site-v1-val-{per_domain}-{size}.npz"
    return cached_arrays(path, lambda: build(per_domain, size, log=log))
