"""Phantom studies from (domain, seed): `generate_study` for whole studies at full resolution
(DICOM writer, evaluation, demo) and `generate_image` for the one-image-per-seed fast path that
training uses (same scenes, rendered at a reduced matrix)."""

from __future__ import annotations

import numpy as np

from model.phantoms import anatomy_ct, anatomy_cxr, anatomy_mr
from model.phantoms.types import DOMAINS, Domain, PhantomImage, PhantomStudy

NORMAL_FRACTION = 0.4


def _scene_rng(domain: Domain, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, DOMAINS.index(domain), 1])


def _sample(domain: Domain, seed: int):
    rng = _scene_rng(domain, seed)
    abnormal = bool(rng.random() >= NORMAL_FRACTION)
    if domain == "cxr":
        return anatomy_cxr.sample(rng, abnormal)
    if domain == "chest_ct":
        return anatomy_ct.sample_chest(rng, abnormal)
    if domain == "abd_ct":
        return anatomy_ct.sample_abdomen(rng, abnormal)
    if domain == "brain_mr":
        return anatomy_mr.sample(rng, abnormal)
    raise ValueError(f"unknown domain {domain!r}")


def generate_study(
    domain: Domain, seed: int, n_slices: int | None = None, max_side: int | None = None
) -> PhantomStudy:
    """A whole study. X-ray: one PA image. CT/MR: an axial series (cranial slice first) of
    `n_slices` slices (default: the scene's own 16-40). `max_side` renders smaller (tests)."""
    if n_slices is not None and n_slices < 1:
        raise ValueError("n_slices must be at least 1")
    scene = _sample(domain, seed)
    if isinstance(scene, anatomy_cxr.CxrScene):
        image, findings = anatomy_cxr.render(scene, np.random.default_rng([seed, 100]), max_side)
        return PhantomStudy(domain=domain, seed=seed, images=[image], findings=findings)
    if isinstance(scene, anatomy_ct.CtScene):
        images = anatomy_ct.render_study_images(scene, seed, n_slices, max_side)
        return PhantomStudy(domain, seed, images, anatomy_ct.study_findings(scene))
    images = anatomy_mr.render_study_images(scene, seed, n_slices, max_side)
    return PhantomStudy(domain, seed, images, anatomy_mr.study_findings(scene))


def generate_image(domain: Domain, seed: int, max_side: int | None = 384) -> PhantomImage:
    """One image per seed for training: an X-ray, or one slice of the seed's series (biased
    towards slices through a lesion so that lesions are not rare)."""
    scene = _sample(domain, seed)
    rng = np.random.default_rng([seed, 200])
    if isinstance(scene, anatomy_cxr.CxrScene):
        return anatomy_cxr.render(scene, rng, max_side)[0]
    lesions = scene.lesions
    if lesions and rng.random() < 0.6:
        les = lesions[int(rng.integers(len(lesions)))]
        z = les.z + float(rng.uniform(-0.5, 0.5)) * les.r
    else:
        z = float(rng.uniform(scene.z_lo, scene.z_hi))
    if isinstance(scene, anatomy_ct.CtScene):
        return anatomy_ct.render_slice(scene, z, rng, max_side)
    return anatomy_mr.render_slice(scene, z, rng, max_side)
