"""The ORT runtime helper: contract from metadata, boxes back in source pixels, batching,
Region→Text queries, and the OOD gate on real non-phantom DICOM images and noise."""

from __future__ import annotations

import numpy as np

from model.metrics import iou
from model.ood_inputs import noise_images, pydicom_images
from model.phantoms.generator import generate_study
from shared.vocab import load_vocab


def test_metadata_matches_the_vocabulary(reference_model) -> None:
    info = reference_model.info
    vocab = load_vocab()
    assert info.vocab_version == vocab.version
    assert set(info.region_codes) == set(vocab.region_codes)
    assert set(info.finding_codes) == set(vocab.finding_codes)
    assert info.domain_outputs[-1] == "unsupported"


def test_full_resolution_xray_boxes_land_in_source_pixels(reference_model) -> None:
    img = generate_study("cxr", 2_000_031).images[0]
    (pred,) = reference_model.predict(
        [(img.pixels, *img.window)], queries=[[r.box for r in img.regions]]
    )
    assert pred.domain == "cxr"
    ious = []
    for r in img.regions:
        got = pred.region(r.code)
        assert got is not None
        ious.append(iou(np.array(got.box), np.array(r.box))[0, 0])
    # lungs are big: their boxes only match in source pixels if the transform is right
    assert min(ious[:2]) > 0.8
    assert np.mean(np.array(ious) >= 0.5) >= 0.8
    hits = [q.region_code == r.code for q, r in zip(pred.queries, img.regions, strict=True)]
    assert np.mean(hits) >= 0.8


def test_batching_does_not_change_answers(reference_model) -> None:
    study = generate_study("abd_ct", 2_000_032, n_slices=5)
    items = [(im.pixels, *im.window) for im in study.images]
    together = reference_model.predict(items)
    alone = [reference_model.predict([it])[0] for it in items]
    for a, b in zip(together, alone, strict=True):
        assert a.domain == b.domain
        np.testing.assert_allclose(
            [r.presence for r in a.all_regions], [r.presence for r in b.all_regions], atol=1e-5
        )


def test_phantoms_are_accepted(reference_model) -> None:
    for domain in ("cxr", "chest_ct", "abd_ct", "brain_mr"):
        study = generate_study(domain, 2_000_033)  # type: ignore[arg-type]
        im = study.images[len(study.images) // 2]
        (pred,) = reference_model.predict([(im.pixels, *im.window)])
        assert pred.domain == domain, (domain, pred.domain_probs)


def test_ood_gate_rejects_noise_and_foreign_dicom(reference_model) -> None:
    noise = noise_images(12, seed=99)
    preds = reference_model.predict([(a, c, w) for _, a, c, w in noise])
    assert all(not p.supported for p in preds)
    foreign = pydicom_images()
    assert len(foreign) > 30
    preds = reference_model.predict([(a, c, w) for _, a, c, w in foreign])
    rejected = np.mean([not p.supported for p in preds])
    assert rejected >= 0.9, rejected
