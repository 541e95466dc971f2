"""The ORT runtime helper: contract from metadata, boxes back in source pixels, batching,
Region→Text queries, and the OOD gate on real non-phantom DICOM images and noise."""

from __future__ import annotations

import numpy as np

from model import shifts
from model.augment import MODALITY
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
        [(img.pixels, *img.window, "DX")], queries=[[r.box for r in img.regions]]
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
    items = [(im.pixels, *im.window, "CT") for im in study.images]
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
        (pred,) = reference_model.predict([(im.pixels, *im.window, MODALITY[domain])])
        assert pred.domain == domain, (domain, pred.domain_probs)


def test_a_site_s_variations_are_answered_not_rejected(reference_model) -> None:
    """Another window in the header, a vendor's curve, a softer kernel, an 8-bit rendering with
    no modality: the same phantom is still read as its domain and its regions found."""
    rng = np.random.default_rng(5)
    for domain in ("cxr", "chest_ct", "abd_ct", "brain_mr"):
        study = generate_study(domain, 2_000_034)  # type: ignore[arg-type]
        im = study.images[len(study.images) // 2]
        for name in ("window:narrow", "contrast:gamma0.6", "blur:1.0", "display_png"):
            got = shifts.apply(name, domain, im, rng)
            if got is None:
                continue
            item, scale = got
            (pred,) = reference_model.predict([item])
            assert pred.domain == domain, (domain, name, pred.domain_probs)
            present = [r for r in im.regions if pred.region(r.code) is not None]
            hits = [
                iou(np.array(pred.region(r.code).box), np.array(r.box) * scale)[0, 0] >= 0.5
                for r in present
            ]
            assert np.mean(hits) >= 0.7, (domain, name, hits)


def test_ood_gate_rejects_noise_and_foreign_dicom(reference_model) -> None:
    noise = noise_images(12, seed=99)
    preds = reference_model.predict([(a, c, w) for _, a, c, w in noise])
    assert all(not p.supported for p in preds)
    # noise claiming to be CT or MR (the modality path it would take from a DICOM header)
    preds = reference_model.predict([(a, c, w, "CT") for _, a, c, w in noise[:6]])
    preds += reference_model.predict([(a, c, w, "MR") for _, a, c, w in noise[6:]])
    assert all(not p.supported for p in preds)
    foreign = pydicom_images()
    assert len(foreign) > 30
    preds = reference_model.predict([(a, c, w) for _, a, c, w in foreign])
    rejected = np.mean([not p.supported for p in preds])
    assert rejected >= 0.9, rejected
