"""The extra abdominal CT training images (model.hard_abdomen) are training-only: the phantoms of
existing seeds, the test split's included, render exactly as before, and the extra images come
from training seeds and hold what they are for (a liver lesion beside the pancreas, not on it)."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from model.hard_abdomen import generate_hard_image, hard_seeds, sample_scene
from model.phantoms.generator import generate_image, generate_study
from model.phantoms.splits import split_of
from model.phantoms.types import DOMAINS
from model.training_data import build_hard_abdomen

# sha256 (first 16 hex digits) of pixels + ground truth, computed with the generator before the
# extra images existed (commit b011ad1): test studies 2000000 and 2000004 at max_side 96, and
# the training image of seed 4. A change here changes the test split and every comparison
# between model versions.
STUDY_DIGESTS = {
    "cxr": ("3d627b233bf443c9", "808778cc126eeecd"),
    "chest_ct": ("c496d914b15825f6", "a0a7be0244d81eb6"),
    "abd_ct": ("4ef43f11b9e69082", "7001ed2bb0dac679"),
    "brain_mr": ("64c1f73986f8dc97", "71058bbd0bb57c2c"),
}
IMAGE_DIGESTS = {
    "cxr": "a84914a9125562fa",
    "chest_ct": "8af03772096ee0f7",
    "abd_ct": "659030c4696ae304",
    "brain_mr": "a12e97ecdc93f840",
}


def _study_digest(domain: str, seed: int) -> str:
    h = hashlib.sha256()
    study = generate_study(domain, seed, max_side=96)
    for im in study.images:
        h.update(im.pixels.tobytes())
        h.update(repr((im.window, im.regions, im.findings, im.slice_position_mm)).encode())
    h.update(repr(study.findings).encode())
    return h.hexdigest()[:16]


def _image_digest(domain: str, seed: int) -> str:
    h = hashlib.sha256()
    im = generate_image(domain, seed, max_side=96)
    h.update(im.pixels.tobytes())
    h.update(repr((im.window, im.regions, im.findings)).encode())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("domain", DOMAINS)
def test_existing_phantoms_are_unchanged(domain: str) -> None:
    assert tuple(_study_digest(domain, s) for s in (2000000, 2000004)) == STUDY_DIGESTS[domain]
    assert _image_digest(domain, 4) == IMAGE_DIGESTS[domain]


def test_extra_images_use_training_seeds_only() -> None:
    s = hard_seeds(5000)
    assert {split_of(s[0]), split_of(s[-1])} == {"train"}
    assert s[0] >= 5000 * 10  # well past the ordinary training images of any recipe


def _in_pancreas_grown(scene, les, grow_mm: float) -> bool:
    """Whether the lesion's centre lies in the pancreas's section at its height grown by its
    radius plus grow_mm (grow_mm 0: the sphere overlaps the pancreas)."""
    p = scene.organs["pancreas"][0]
    th = math.radians(p.angle)
    u = (les.x - p.cx) * math.cos(th) + (les.y - p.cy) * math.sin(th)
    v = -(les.x - p.cx) * math.sin(th) + (les.y - p.cy) * math.cos(th)
    f = p.factor(les.z)
    rx, ry = p.rx * f + les.r + grow_mm, p.ry * f + les.r + grow_mm
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1


def test_liver_lesions_lie_beside_the_pancreas_not_on_it() -> None:
    near = 0
    for seed in hard_seeds(60):
        scene = sample_scene(seed)
        assert scene.lesions
        for les in scene.lesions:
            assert les.value is not None
            if les.code != "liver_lesion":
                continue
            assert not _in_pancreas_grown(scene, les, 0.5)  # clear of the pancreas
            assert _in_pancreas_grown(scene, les, 10.5)  # but within 10 mm of it
            assert les.x + les.r < 0.12 * scene.a  # in the liver that is drawn
            near += 1
    assert near >= 25


def test_extra_images_show_lesions_with_boxes() -> None:
    codes: dict[str, int] = {}
    for seed in hard_seeds(40):
        im = generate_hard_image(seed, max_side=128)
        h, w = im.pixels.shape
        for f in im.findings:
            codes[f.code] = codes.get(f.code, 0) + 1
            x1, y1, x2, y2 = f.box
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
    assert set(codes) == {"liver_lesion", "pancreatic_mass", "kidney_lesion"}


def test_extra_images_encode_as_abdominal_ct() -> None:
    data = build_hard_abdomen(6, 64, 96, workers=1)
    assert data["image"].shape == (6, 64, 64)
    assert (data["domain"] == DOMAINS.index("abd_ct")).all()
    assert (data["lesion_classes"] >= 0).any()
    assert np.isfinite(data["lesion_boxes"]).all()
