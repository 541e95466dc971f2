"""Axial T2-weighted brain MRI phantom: scalp, skull, CSF, cortex (grey matter with gyral
folding), white matter, falx, lateral and third ventricles; tumour with oedema, haemorrhage and
infarct. Signal is in arbitrary units (~0..1200), scaled by a per-study receiver gain, with a smooth
bias field."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from model.phantoms.raster import Canvas, ellipse, ellipse_bbox, finish, smooth_noise
from model.phantoms.types import FindingBox, PhantomImage, RegionBox, StudyFinding
from model.phantoms.volume import Solid, Sphere, slice_positions, visible_box

SCALP, SKULL, CSF, GM, WM = 640.0, 70.0, 1000.0, 600.0, 420.0


@dataclass
class MrScene:
    rows: int
    cols: int
    spacing: tuple[float, float]
    offset: tuple[float, float]
    rotation: float
    head: Solid
    brain: Solid
    ventricles: list[Solid]  # right, left
    third: Solid
    lesions: list[Sphere]
    gain: float
    noise: float
    blur_px: float
    z_lo: float
    z_hi: float
    n_slices: int
    gm_thick: float


def sample(rng: np.random.Generator, abnormal: bool) -> MrScene:
    a, b = float(rng.uniform(66, 80)), float(rng.uniform(84, 100))
    rows = int(rng.choice([256, 320, 384, 448, 512]))
    cols = rows if rng.random() < 0.5 else int(round(rows * float(rng.choice([0.75, 0.8, 0.875]))))
    cols = max(cols, 256)  # CT/MR matrices stay within 256..512
    fov_r = 2 * b * float(rng.uniform(1.12, 1.35))
    spacing_r = fov_r / rows
    spacing_c = max(spacing_r, 2 * a * 1.15 / cols)
    head = Solid(0, 0, a, b, 0.0, 100.0, 0, 2.2)
    brain = Solid(0, 0.01 * b, a - 9, b - 9, -2.0, 92.0, 0, 2.2)
    vw = float(rng.uniform(5, 10))  # ventricle size varies with age
    # right (image left, negative x) first, then left
    ventricles = [
        Solid(cx, -0.06 * b, vw, 0.36 * b, 12.0, 24.0, ang, 2.2)
        for cx, ang in ((-(vw + 3), -8.0), (vw + 3, 8.0))
    ]
    third = Solid(0, 0.08 * b, float(rng.uniform(3.0, 4.5)), 13.0, -14.0, 13.0, 0, 2.5)
    lesions: list[Sphere] = []
    if abnormal:
        code = str(rng.choice(["brain_tumour", "intracranial_haemorrhage", "infarct"]))
        side = -1 if rng.random() < 0.5 else 1
        region = "right_cerebral_hemisphere" if side < 0 else "left_cerebral_hemisphere"
        r = float(rng.uniform(8, 20)) if code != "infarct" else float(rng.uniform(8, 18))
        z = float(rng.uniform(-20, 45))
        f = brain.factor(z)
        # keep the lesion inside its hemisphere and off the ventricles
        for _ in range(100):
            ang = float(rng.uniform(-math.pi / 2 * 0.9, math.pi / 2 * 0.9))
            rr = float(rng.uniform(0.45, 0.72 if code != "infarct" else 0.78))
            x = side * rr * (a - 9) * f * math.cos(ang)
            y = rr * (b - 9) * f * math.sin(ang)
            if abs(x) > r + 6 and abs(x) + r < (a - 12) * f:
                break
        lesions.append(Sphere(code, region, x, y, z, r))
    z_lo, z_hi = -40.0, float(rng.uniform(70, 82))
    return MrScene(
        rows=rows,
        cols=cols,
        spacing=(spacing_r, spacing_c),
        offset=(float(rng.uniform(-0.05, 0.05) * a), float(rng.uniform(-0.05, 0.05) * b)),
        rotation=float(rng.uniform(-8, 8)),
        head=head,
        brain=brain,
        ventricles=ventricles,
        third=third,
        lesions=lesions,
        gain=float(rng.uniform(0.6, 1.6)),
        noise=float(rng.uniform(6, 28)),
        blur_px=float(rng.uniform(0.3, 1.0)),
        z_lo=z_lo,
        z_hi=z_hi,
        n_slices=int(rng.integers(16, 33)),
        gm_thick=float(rng.uniform(0.06, 0.1)),
    )


def render_slice(
    scene: MrScene, z: float, rng: np.random.Generator, max_side: int | None = None
) -> PhantomImage:
    k = 1.0 if max_side is None else min(1.0, max_side / max(scene.rows, scene.cols))
    rows, cols = max(int(round(scene.rows * k)), 8), max(int(round(scene.cols * k)), 8)
    sp = (scene.spacing[0] * scene.rows / rows, scene.spacing[1] * scene.cols / cols)
    cv = Canvas(rows, cols, sp, scene.offset, scene.rotation, fill=0.0)
    regions: list[RegionBox] = []
    findings: list[FindingBox] = []
    head = scene.head.section(z)
    brain_f = scene.brain.factor(z)
    big = scene.head.bbox(5)
    if head is not None:
        cv.paint(cv.mask(head, big), SCALP)
        skull = scene.head.section(z, grow_mm=-5)
        if skull is not None:
            cv.paint(cv.mask(skull, big), SKULL)
    if brain_f > 0:
        bx, by = scene.brain.rx * brain_f, scene.brain.ry * brain_f
        cx, cy = scene.brain.cx, scene.brain.cy
        folds = smooth_noise(rng, (rows, cols), 5.0 / sp[1], octaves=2)
        cv.paint(cv.mask(ellipse(cx, cy, bx + 2, by + 2), big), CSF)
        brain_m = cv.mask(ellipse(cx, cy, bx, by), big)
        cv.paint(brain_m, GM)
        # gyral folding: the grey/white boundary and the sulci are warped by smooth noise
        fold = cv.texture(brain_m, folds)
        r0, c0 = brain_m.r0, brain_m.c0
        x, y = cv.grids(r0, r0 + brain_m.mask.shape[0], c0, c0 + brain_m.mask.shape[1])
        rad = np.sqrt(((x - cx) / bx) ** 2 + ((y - cy) / by) ** 2)
        wm = brain_m.mask & (rad + 0.05 * fold < 1 - scene.gm_thick * 2.2)
        sulci = brain_m.mask & (rad > 0.9) & (np.abs(fold) < 0.12)
        region = cv.img[r0 : r0 + wm.shape[0], c0 : c0 + wm.shape[1]]
        region[wm] = WM
        region[sulci] = CSF * 0.9
        # falx / interhemispheric fissure, except where the corpus callosum crosses
        fiss = brain_m.mask & (np.abs(x - cx) < 1.4) & (np.abs(y - cy) > 0.35 * by)
        region[fiss] = CSF
        for code, side in (("right_cerebral_hemisphere", -1), ("left_cerebral_hemisphere", 1)):
            m = cv.mask(
                lambda x, y, side=side: ellipse(cx, cy, bx, by)(x, y) & ((x - cx) * side > 0),
                big,
            )
            box = visible_box(m, sp)
            if box is not None:
                regions.append(RegionBox(code, box))
    for code, vent in zip(
        ("right_lateral_ventricle", "left_lateral_ventricle", "third_ventricle"),
        (*scene.ventricles, scene.third),
        strict=True,
    ):
        fn = vent.section(z)
        if fn is None:
            continue
        m = cv.mask(fn, vent.bbox(3))
        cv.paint(m, CSF)
        box = visible_box(m, sp)
        if box is not None:
            regions.append(RegionBox(code, box))
    for les in scene.lesions:
        r = les.radius_at(z)
        if r <= 0:
            continue
        lbox = ellipse_bbox(les.x, les.y, 2 * r + 4, 2 * r + 4)
        inside = ellipse(
            scene.brain.cx, scene.brain.cy, scene.brain.rx * brain_f, scene.brain.ry * brain_f
        )
        if les.code == "brain_tumour":
            halo = ellipse(les.x, les.y, 1.9 * r, 1.7 * r)
            oedema = cv.mask(lambda x, y, h=halo, i=inside: h(x, y) & i(x, y), lbox)
            cv.paint(oedema, 820.0)
            m = cv.mask(ellipse(les.x, les.y, r, r * 0.92), lbox)
            cv.paint(m, 720.0)
            cv.paint(cv.mask(ellipse(les.x, les.y, 0.55 * r, 0.5 * r), lbox), 950.0)
        elif les.code == "intracranial_haemorrhage":
            cv.paint(cv.mask(ellipse(les.x, les.y, 1.3 * r, 1.3 * r), lbox), 880.0)
            m = cv.mask(ellipse(les.x, les.y, r, r * 0.85, 30.0), lbox)
            cv.paint(m, 160.0)
        else:  # infarct: a wedge pointing to the centre, reaching the cortex
            ang = math.degrees(math.atan2(les.y - scene.brain.cy, les.x - scene.brain.cx))
            wedge = ellipse(les.x, les.y, 1.25 * r, 0.75 * r, ang)
            m = cv.mask(lambda x, y, w=wedge, i=inside: w(x, y) & i(x, y), lbox)
            cv.paint(m, 860.0)
        if les.marked_at(z):
            box = m.box()
            if box is not None:
                findings.append(FindingBox(les.code, les.region_code, box, round(2 * les.r, 1)))
    # receiver gain and a smooth coil-sensitivity bias field
    bias = 1.0 + 0.08 * smooth_noise(rng, (rows, cols), max(rows, cols) / 3)
    img = cv.img * bias * scene.gain
    img = finish(img, rng, scene.blur_px * k, scene.noise * scene.gain * k)
    img = np.clip(img, 0, None)
    return PhantomImage(
        pixels=img,
        pixel_spacing_mm=sp,
        window=(float(520 * scene.gain), float(1100 * scene.gain)),
        regions=regions,
        findings=findings,
        slice_position_mm=float(z),
    )


def render_study_images(
    scene: MrScene, seed: int, n_slices: int | None, max_side: int | None = None
) -> list[PhantomImage]:
    n = n_slices or scene.n_slices
    zs = slice_positions(scene.z_lo, scene.z_hi, n)
    thickness = (scene.z_hi - scene.z_lo) / n
    images = []
    for i, z in enumerate(zs):
        rng = np.random.default_rng([seed, 103, i])
        img = render_slice(scene, z, rng, max_side)
        img.slice_index = i
        img.slice_thickness_mm = round(thickness, 3)
        images.append(img)
    return images


def study_findings(scene: MrScene) -> list[StudyFinding]:
    return [StudyFinding(s.code, s.region_code, round(2 * s.r, 1)) for s in scene.lesions]
