"""Turning cached arrays into training batches, with 'unsupported' negatives mixed in."""

from __future__ import annotations

import numpy as np
import torch

from model import ood_negatives
from model.augment import Sample, augment
from model.labels import DOMAIN_OUTPUTS, UNSUPPORTED


def make_batch(
    data: dict[str, np.ndarray],
    idx: np.ndarray,
    rng: np.random.Generator,
    neg_fraction: float,
    n_queries: int,
    augment_fraction: float = 0.0,
    augment_strength: tuple[float, ...] | None = None,
) -> dict[str, torch.Tensor]:
    """`augment_strength` (DOMAIN_OUTPUTS order without 'unsupported'; default 1 each) scales
    how often each variation is applied to a domain's augmented images (model.augment)."""
    images = data["image"][idx].astype(np.float32) / 255.0
    out = {k: data[k][idx].copy() for k in data if k not in ("image", "content")}
    n_neg = int(round(len(idx) * neg_fraction))
    s = images.shape[-1]
    for j in range(len(idx)):
        if j < n_neg or rng.random() >= augment_fraction:
            continue
        sample = Sample(
            images[j],
            out["region_boxes"][j],
            out["region_present"][j],
            out["lesion_boxes"][j],
            out["lesion_classes"][j],
            tuple(int(v) for v in data["content"][idx[j]]),  # type: ignore[arg-type]
        )
        d = int(out["domain"][j])
        strength = augment_strength[d] if augment_strength is not None else 1.0
        augment(sample, DOMAIN_OUTPUTS[d], rng, strength=strength)
        images[j] = sample.image
        out["region_boxes"][j] = sample.region_boxes
        out["region_present"][j] = sample.region_present
        out["lesion_boxes"][j] = sample.lesion_boxes
    for j in range(n_neg):
        if rng.random() < 0.55:
            images[j] = ood_negatives.synthetic(rng, s)
        else:
            images[j] = ood_negatives.corrupted(rng, images[j], images[(j + 1) % len(idx)])
        out["domain"][j] = UNSUPPORTED
        out["region_present"][j] = False
        out["lesion_classes"][j] = -1
        out["abnormal"][j] = False
        out["findings"][j] = False
    # Region→Text queries: jittered ground-truth boxes of regions present on the image
    b, r = out["region_present"].shape
    q_boxes = np.zeros((b, n_queries, 4), np.float32)
    q_labels = np.full((b, n_queries), -100, np.int64)  # -100: ignored by cross-entropy
    for i in range(b):
        present = np.flatnonzero(out["region_present"][i])
        if present.size == 0:
            q_boxes[i] = [0.25, 0.25, 0.75, 0.75]
            continue
        pick = rng.choice(present, size=n_queries, replace=present.size < n_queries)
        bx = out["region_boxes"][i, pick]
        wh = np.stack([bx[:, 2] - bx[:, 0], bx[:, 3] - bx[:, 1]] * 2, axis=1)
        jitter = rng.normal(0, 0.04, bx.shape) * wh * (rng.random((n_queries, 1)) < 0.7)
        q = bx + jitter
        q[:, 2] = np.maximum(q[:, 2], q[:, 0] + 1e-3)
        q[:, 3] = np.maximum(q[:, 3], q[:, 1] + 1e-3)
        q_boxes[i] = np.clip(q, 0, 1)
        q_labels[i] = pick
    batch = {k: torch.from_numpy(np.asarray(v)) for k, v in out.items()}
    batch["image"] = torch.from_numpy(images).unsqueeze(1)
    batch["query_boxes"] = torch.from_numpy(q_boxes)
    batch["query_labels"] = torch.from_numpy(q_labels)
    return batch
