"""Axial CT phantoms in Hounsfield units: chest (lungs, heart, aorta, trachea, spine, ribs) and
abdomen (liver, spleen, kidneys, pancreas, gallbladder, aorta, spine, bowel), with spherical
lesions (lung nodules; liver, kidney and pancreatic lesions).

Axial frame: x to the image's right (patient's left), y down the image (towards the back),
z up (towards the head); the first slice of a series is the most cranial one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from model.phantoms.raster import Canvas, ellipse, ellipse_bbox, finish, smooth_noise
from model.phantoms.types import Domain, FindingBox, PhantomImage, RegionBox, StudyFinding
from model.phantoms.volume import (
    Solid,
    Sphere,
    paint_sphere,
    point_in_solid,
    slice_positions,
    visible_box,
)

AIR, FAT, WATER, SOFT, BONE, CORTEX = -1000.0, -100.0, 0.0, 40.0, 350.0, 900.0


@dataclass
class CtScene:
    domain: Domain
    rows: int
    cols: int
    spacing: float
    offset: tuple[float, float]
    rotation: float
    a: float  # body half width, mm
    b: float  # body half depth, mm
    z_lo: float
    z_hi: float
    n_slices: int
    organs: dict[str, list[Solid]]
    hu: dict[str, float]
    lesions: list[Sphere]
    noise: float
    blur_px: float
    window: tuple[float, float]
    bowel: list[Solid] = field(default_factory=list)


def _geometry(rng: np.random.Generator, a: float, b: float) -> tuple[int, int, float]:
    rows = int(rng.choice([256, 320, 384, 448, 512]))
    aspect = 1.0 if rng.random() < 0.7 else float(rng.choice([0.75, 0.875, 1.125, 1.25]))
    cols = int(np.clip(round(rows * aspect / 16) * 16, 256, 512))
    fov = 2 * a * float(rng.uniform(1.08, 1.35))
    spacing = max(fov / cols, 2 * b * 1.15 / rows)
    return rows, cols, spacing


def sample_chest(rng: np.random.Generator, abnormal: bool) -> CtScene:
    a, b = float(rng.uniform(135, 180)), float(rng.uniform(95, 125))
    rows, cols, spacing = _geometry(rng, a, b)
    hz = float(rng.uniform(105, 135))
    contrast = rng.random() < 0.6
    organs: dict[str, list[Solid]] = {
        "right_lung": [Solid(-0.46 * a, 0.02 * b, 0.37 * a, 0.74 * b, 0.0, hz, 0, 2.6)],
        "left_lung": [Solid(0.46 * a, 0.02 * b, 0.36 * a, 0.74 * b, -0.03 * hz, hz, 0, 2.6)],
        "heart": [Solid(0.12 * a, -0.22 * b, 0.36 * a, 0.44 * b, -0.45 * hz, 0.42 * hz, -20, 2.2)],
        "trachea": [Solid(0.0, -0.12 * b, 8.5, 8.5, 0.65 * hz, 0.55 * hz, 0, 8)],
        "spine": [Solid(0.0, 0.64 * b, 17.0, 15.0, -0.3 * hz, 2 * hz, 0, 8)],
    }
    z_arch = 0.3 * hz
    organs["aorta"] = [
        Solid(0.1 * a, 0.45 * b, 12.0, 12.0, z_arch - 1.5 * hz, 1.5 * hz, 0, 8),  # descending
        Solid(0.0, -0.3 * b, 15.0, 15.0, z_arch - 0.3 * hz, 0.3 * hz, 0, 8),  # ascending
        Solid(0.05 * a, 0.07 * b, 14.0, 0.4 * b, z_arch + 6, 9.0, -15, 8),  # arch
    ]
    hu = {
        "lung": -860.0 + float(rng.uniform(-30, 30)),
        "heart": float(rng.uniform(120, 180)) if contrast else 40.0,
        "aorta": float(rng.uniform(220, 330)) if contrast else 45.0,
        "nodule": 25.0,
    }
    lesions: list[Sphere] = []
    if abnormal:
        for _ in range(1 if rng.random() < 0.65 else 2):
            side = "right_lung" if rng.random() < 0.5 else "left_lung"
            r = float(rng.uniform(5, 16))
            x, y, z = point_in_solid(rng, organs[side][0], margin_mm=r + 22, zmax_t=0.6)
            lesions.append(Sphere("lung_nodule", side, x, y, z, r))
    z_lo, z_hi = -hz * 0.92, hz * 1.02
    return CtScene(
        domain="chest_ct",
        rows=rows,
        cols=cols,
        spacing=spacing,
        offset=(float(rng.uniform(-0.05, 0.05) * a), float(rng.uniform(-0.05, 0.05) * b)),
        rotation=float(rng.uniform(-5, 5)),
        a=a,
        b=b,
        z_lo=z_lo,
        z_hi=z_hi,
        n_slices=int(rng.integers(16, 41)),
        organs=organs,
        hu=hu,
        lesions=lesions,
        noise=float(rng.uniform(8, 30)),
        blur_px=float(rng.uniform(0.4, 1.2)),
        window=(-550.0 + float(rng.uniform(-50, 50)), 1600.0 + float(rng.uniform(-100, 100))),
    )


def sample_abdomen(rng: np.random.Generator, abnormal: bool) -> CtScene:
    a, b = float(rng.uniform(140, 185)), float(rng.uniform(100, 135))
    rows, cols, spacing = _geometry(rng, a, b)
    contrast = rng.random() < 0.7
    kz = float(rng.uniform(-35, -15))
    organs: dict[str, list[Solid]] = {
        "liver": [Solid(-0.36 * a, -0.08 * b, 0.5 * a, 0.66 * b, 55.0, 85.0, 15, 2.4)],
        "spleen": [Solid(0.6 * a, 0.3 * b, 0.16 * a, 0.3 * b, 50.0, 50.0, -35, 2.2)],
        "right_kidney": [Solid(-0.36 * a, 0.44 * b, 24.0, 32.0, kz - 12, 52.0, 25, 2.2)],
        "left_kidney": [Solid(0.36 * a, 0.42 * b, 24.0, 32.0, kz, 52.0, -25, 2.2)],
        "pancreas": [Solid(0.08 * a, 0.12 * b, 0.4 * a, 11.0, 12.0, 24.0, -12, 2.4)],
        "gallbladder": [Solid(-0.25 * a, -0.24 * b, 15.0, 24.0, 5.0, 34.0, 20, 2.0)],
        "aorta": [Solid(0.07 * a, 0.24 * b, 11.0, 11.0, 0.0, 400.0, 0, 8)],
        "spine": [Solid(0.0, 0.5 * b, 20.0, 17.0, 0.0, 400.0, 0, 8)],
    }
    hu = {
        "liver": float(rng.uniform(100, 130)) if contrast else 58.0,
        "spleen": float(rng.uniform(105, 135)) if contrast else 50.0,
        "kidney": float(rng.uniform(150, 210)) if contrast else 35.0,
        "pancreas": float(rng.uniform(85, 110)) if contrast else 45.0,
        "gallbladder": 8.0,
        "aorta": float(rng.uniform(160, 300)) if contrast else 42.0,
    }
    bowel = []
    for _ in range(int(rng.integers(8, 16))):
        bowel.append(
            Solid(
                float(rng.uniform(-0.55, 0.55)) * a,
                float(rng.uniform(-0.75, 0.1)) * b,
                float(rng.uniform(12, 28)),
                float(rng.uniform(10, 22)),
                float(rng.uniform(-90, 40)),
                float(rng.uniform(20, 60)),
                float(rng.uniform(0, 180)),
            )
        )
    lesions: list[Sphere] = []
    if abnormal:
        pool = ["liver_lesion", "kidney_lesion", "pancreatic_mass"]
        n = 1 if rng.random() < 0.7 else 2
        for code in rng.choice(pool, size=n, replace=False):
            code = str(code)
            if code == "liver_lesion":
                r = float(rng.uniform(6, 25))
                x, y, z = _liver_lesion_centre(rng, organs, a, r)
                lesions.append(Sphere(code, "liver", x, y, z, r))
            elif code == "kidney_lesion":
                side = "right_kidney" if rng.random() < 0.5 else "left_kidney"
                r = float(rng.uniform(7, 18))
                x, y, z = point_in_solid(rng, organs[side][0], max(r - 8, 2), 0.5)
                lesions.append(Sphere(code, side, x, y, z, r))
            else:
                r = float(rng.uniform(8, 17))
                x, y, z = point_in_solid(rng, organs["pancreas"][0], 1.0, 0.3)
                lesions.append(Sphere(code, "pancreas", x, y, z, r))
    z_lo, z_hi = -110.0, float(rng.uniform(125, 140))
    return CtScene(
        domain="abd_ct",
        rows=rows,
        cols=cols,
        spacing=spacing,
        offset=(float(rng.uniform(-0.05, 0.05) * a), float(rng.uniform(-0.05, 0.05) * b)),
        rotation=float(rng.uniform(-5, 5)),
        a=a,
        b=b,
        z_lo=z_lo,
        z_hi=z_hi,
        n_slices=int(rng.integers(16, 41)),
        organs=organs,
        hu=hu,
        lesions=lesions,
        noise=float(rng.uniform(8, 25)),
        blur_px=float(rng.uniform(0.4, 1.2)),
        window=(40.0 + float(rng.uniform(-15, 15)), 400.0 + float(rng.uniform(-40, 60))),
        bowel=bowel,
    )


def _liver_lesion_centre(
    rng: np.random.Generator, organs: dict[str, list[Solid]], a: float, r: float
) -> tuple[float, float, float]:
    """A liver lesion lies in the liver that is *shown*: left of the liver's clip line and
    clear of the pancreas, which is drawn over the liver's medial tip. (Before, a sphere there
    was painted across the pancreas and labelled 'liver': the test split's abdominal CT read
    such lesions as pancreatic masses.) Lesions near the pancreas stay common, just not on it."""
    liver, pancreas = organs["liver"][0], organs["pancreas"][0]
    th = math.radians(pancreas.angle)
    x, y, z = point_in_solid(rng, liver, r + 8, 0.55)
    for _ in range(60):
        u = (x - pancreas.cx) * math.cos(th) + (y - pancreas.cy) * math.sin(th)
        v = -(x - pancreas.cx) * math.sin(th) + (y - pancreas.cy) * math.cos(th)
        clear = (u / (pancreas.rx + r + 4)) ** 2 + (v / (pancreas.ry + r + 4)) ** 2 > 1
        if clear and x + r < 0.12 * a - 4:
            break
        x, y, z = point_in_solid(rng, liver, r + 8, 0.55)
    return x, y, z


def _body(cv: Canvas, scene: CtScene) -> None:
    a, b = scene.a, scene.b
    box = ellipse_bbox(0, 0, a + 5, b + 5)
    cv.paint(cv.mask(ellipse(0, 0, a, b), box), FAT)
    cv.paint(cv.mask(ellipse(0, 0.02 * b, a - 12, b - 10), box), SOFT + 10)
    cv.paint(cv.mask(ellipse(0, 0.02 * b, a - 20, b - 17), box), FAT + 20)
    # the table under the patient
    cv.paint(
        cv.mask(
            lambda x, y: (y > b + 15) & (y < b + 25) & (np.abs(x) < 1.3 * a),
            (-1.4 * a, b, 1.4 * a, b + 30),
        ),
        -300.0,
    )


def _spine(cv: Canvas, scene: CtScene, solid: Solid) -> None:
    cx, cy = solid.cx, solid.cy
    box = ellipse_bbox(cx, cy + 25, 45, 45)
    cv.paint(cv.mask(ellipse(cx, cy, solid.rx, solid.ry), box), CORTEX)
    cv.paint(cv.mask(ellipse(cx, cy, solid.rx - 3, solid.ry - 3), box), BONE)
    cv.paint(cv.mask(ellipse(cx, cy + solid.ry + 9, 11, 8), box), CORTEX - 200)  # posterior arch
    cv.paint(cv.mask(ellipse(cx, cy + solid.ry + 8, 7, 6), box), 15.0)  # spinal canal
    cv.paint(cv.mask(ellipse(cx, cy + solid.ry + 24, 4, 10), box), CORTEX - 250)  # spinous


def _spine_box(cv: Canvas, solid: Solid, spacing: tuple[float, float]):
    cx, cy = solid.cx, solid.cy
    box = ellipse_bbox(cx, cy + 25, 45, 45)

    def fn(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (
            ellipse(cx, cy, solid.rx, solid.ry)(x, y)
            | ellipse(cx, cy + solid.ry + 9, 11, 8)(x, y)
            | ellipse(cx, cy + solid.ry + 24, 4, 10)(x, y)
        )

    return visible_box(cv.mask(fn, box), spacing)


def render_slice(
    scene: CtScene, z: float, rng: np.random.Generator, max_side: int | None = None
) -> PhantomImage:
    k = 1.0 if max_side is None else min(1.0, max_side / max(scene.rows, scene.cols))
    rows, cols = max(int(round(scene.rows * k)), 8), max(int(round(scene.cols * k)), 8)
    sp = (scene.spacing * scene.rows / rows, scene.spacing * scene.cols / cols)
    cv = Canvas(rows, cols, sp, scene.offset, scene.rotation, fill=AIR)
    _body(cv, scene)
    regions: list[RegionBox] = []
    region_masks = {}
    if scene.domain == "chest_ct":
        region_masks = _chest(cv, scene, z, rng, sp)
    else:
        region_masks = _abdomen(cv, scene, z, rng, sp)
    findings: list[FindingBox] = []
    for les in scene.lesions:
        value = scene.hu.get("nodule", 0.0)
        if les.code == "liver_lesion":
            value = scene.hu["liver"] - float(55 + 10 * math.sin(les.r))
        elif les.code == "kidney_lesion":
            value = 12.0
        elif les.code == "pancreatic_mass":
            value = scene.hu["pancreas"] - 45.0
        if les.value is not None:
            value = les.value
        m = paint_sphere(cv, les, z, value)
        if les.marked_at(z):
            b = m.box()
            if b is not None:
                findings.append(FindingBox(les.code, les.region_code, b, round(2 * les.r, 1)))
    # spine last: bone is drawn over everything it overlaps
    spine = scene.organs["spine"][0]
    _spine(cv, scene, spine)
    for code, box in region_masks.items():
        if box is not None:
            regions.append(RegionBox(code, box))
    sb = _spine_box(cv, spine, sp)
    if sb is not None:
        regions.append(RegionBox("spine", sb))
    img = finish(cv.img, rng, scene.blur_px * k, scene.noise * k)
    return PhantomImage(
        pixels=img,
        pixel_spacing_mm=sp,
        window=scene.window,
        regions=regions,
        findings=findings,
        slice_position_mm=float(z),
    )


def _chest(cv: Canvas, scene: CtScene, z: float, rng: np.random.Generator, sp):
    a, b = scene.a, scene.b
    boxes: dict[str, tuple[float, float, float, float] | None] = {}
    px = sp[1]
    heart = scene.organs["heart"][0]
    heart_fn = heart.section(z)
    heart_grow = heart.section(z, grow_mm=6)
    vessels = smooth_noise(rng, (cv.rows, cv.cols), 5.0 / px, octaves=2)
    for code in ("right_lung", "left_lung"):
        solid = scene.organs[code][0]
        fn = solid.section(z)
        if fn is None:
            boxes[code] = None
            continue
        side = -1 if code == "right_lung" else 1

        def lung(x, y, fn=fn, side=side):
            out = fn(x, y) & (x * side > 0.1 * a)
            if heart_grow is not None:
                out &= ~heart_grow(x, y)
            return out

        m = cv.mask(lung, solid.bbox())
        tex = cv.texture(m, vessels)
        cv.paint(m, scene.hu["lung"] + 60 * np.clip(tex - 1.2, 0, None) ** 2 * 3)
        boxes[code] = visible_box(m, sp)
    if heart_fn is not None:
        m = cv.mask(heart_fn, heart.bbox())
        cv.paint(m, scene.hu["heart"])
        boxes["heart"] = visible_box(m, sp)
    # ribs and sternum: a ring of small bones along the chest wall
    n_ribs = 14
    for i in range(n_ribs):
        t = 2 * math.pi * (i + 0.5 * (int(z / 25) % 2)) / n_ribs
        rx, ry = (a - 16) * math.cos(t), (b - 14) * math.sin(t)
        if abs(math.sin(t)) > 0.95 and math.sin(t) < 0:
            continue
        fn = ellipse(rx, ry, 9, 5, math.degrees(t) + 90)
        cv.paint(cv.mask(fn, ellipse_bbox(rx, ry, 10, 10)), CORTEX - 150)
    cv.paint(cv.mask(ellipse(0, -b + 16, 14, 5), ellipse_bbox(0, -b + 16, 15, 15)), BONE + 200)
    # aorta (any of its parts), trachea
    aorta_fns = [s.section(z) for s in scene.organs["aorta"]]
    aorta_fns = [f for f in aorta_fns if f is not None]
    if aorta_fns:
        m = cv.mask(lambda x, y: np.any([f(x, y) for f in aorta_fns], axis=0), (-a, -b, a, b))
        cv.paint(m, scene.hu["aorta"])
        boxes["aorta"] = visible_box(m, sp)
    tr = scene.organs["trachea"][0]
    fn = tr.section(z)
    if fn is not None:
        m = cv.mask(fn, tr.bbox(5))
        cv.paint(m, AIR + 20)
        boxes["trachea"] = visible_box(m, sp)
    return boxes


def _abdomen(cv: Canvas, scene: CtScene, z: float, rng: np.random.Generator, sp):
    a, b = scene.a, scene.b
    boxes: dict[str, tuple[float, float, float, float] | None] = {}
    for i, loop in enumerate(scene.bowel):
        fn = loop.section(z)
        if fn is not None:
            value = AIR + 100 if i % 3 == 0 else 15.0
            cv.paint(cv.mask(fn, loop.bbox()), value)
    texture = smooth_noise(rng, (cv.rows, cv.cols), 4.0 / sp[1])

    def organ(code: str, value: float, clip=None):
        solid = scene.organs[code][0]
        fn = solid.section(z)
        if fn is None:
            boxes[code] = None
            return None
        shape = fn if clip is None else (lambda x, y: fn(x, y) & clip(x, y))
        m = cv.mask(shape, solid.bbox())
        cv.paint(m, value + 4 * cv.texture(m, texture))
        boxes[code] = visible_box(m, sp)
        return m

    organ("liver", scene.hu["liver"], clip=lambda x, y: (x < 0.12 * a) & (y < 0.42 * b))
    organ("spleen", scene.hu["spleen"])
    organ("pancreas", scene.hu["pancreas"])
    organ("gallbladder", scene.hu["gallbladder"])
    for code in ("right_kidney", "left_kidney"):
        m = organ(code, scene.hu["kidney"])
        solid = scene.organs[code][0]
        f = solid.factor(z)
        if m is not None and f > 0.35:
            side = -1 if code == "right_kidney" else 1
            sinus = ellipse(solid.cx - side * 8, solid.cy, solid.rx * f * 0.4, solid.ry * f * 0.45)
            cv.paint(cv.mask(sinus, solid.bbox()), FAT + 40)
    organ("aorta", scene.hu["aorta"])
    # psoas muscles beside the lower spine
    if z < -20:
        for side in (-1, 1):
            fn = ellipse(side * 34, 0.5 * b, 15, 20)
            cv.paint(cv.mask(fn, ellipse_bbox(side * 34, 0.5 * b, 20, 20)), SOFT + 10)
    return boxes


def render_study_images(
    scene: CtScene, seed: int, n_slices: int | None, max_side: int | None = None
) -> list[PhantomImage]:
    n = n_slices or scene.n_slices
    zs = slice_positions(scene.z_lo, scene.z_hi, n)
    thickness = (scene.z_hi - scene.z_lo) / n
    images = []
    for i, z in enumerate(zs):
        rng = np.random.default_rng([seed, 101, i])
        img = render_slice(scene, z, rng, max_side)
        img.slice_index = i
        img.slice_thickness_mm = round(thickness, 3)
        images.append(img)
    return images


def study_findings(scene: CtScene) -> list[StudyFinding]:
    return [StudyFinding(s.code, s.region_code, round(2 * s.r, 1)) for s in scene.lesions]
