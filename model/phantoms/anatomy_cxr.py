"""Chest X-ray (PA) phantom: torso, lungs with vessel texture, ribs, clavicles, spine, trachea,
mediastinum, heart, hila, hemidiaphragms, upper abdomen; nodules, consolidation, effusion,
pneumothorax and cardiomegaly.

Geometry is in units of the half thorax width `s` (mm), so patient size scales everything.
Attenuation is built as a line-integral-like sum and mapped to display values 0..4095 (brighter =
more attenuation) through an exposure curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from model.phantoms.raster import (
    Canvas,
    Mask,
    ellipse,
    ellipse_bbox,
    finish,
    smooth_noise,
    superellipse,
)
from model.phantoms.types import FindingBox, PhantomImage, RegionBox, StudyFinding

LUNG_FINDINGS = ("lung_nodule", "consolidation", "pleural_effusion", "pneumothorax")


@dataclass
class CxrLesion:
    code: str
    side: int  # -1: right lung (image left), +1: left lung (image right); 0 for the heart
    u: float = 0.0  # centre in thorax units
    v: float = 0.0
    size_mm: float = 0.0
    blobs: list[tuple[float, float, float, float, float]] = field(default_factory=list)


@dataclass
class CxrScene:
    s: float  # half thorax width, mm
    rows: int
    cols: int
    spacing: float  # isotropic detector pixel spacing, mm
    offset: tuple[float, float]
    rotation: float
    ctr: float  # cardiothoracic ratio
    dome_r: float
    dome_l: float
    lung_top: float
    heart_u: float
    heart_v: float
    heart_angle: float
    exposure: float
    contrast: float
    noise: float
    blur_px: float
    lesions: list[CxrLesion]


def _lung_fn(scene: CxrScene, side: int):
    s = scene.s
    dome = scene.dome_r if side < 0 else scene.dome_l
    cu = side * 0.5
    outer = superellipse(cu * s, (scene.lung_top + 0.82) * s, 0.43 * s, 0.82 * s, 2.3)

    def fn(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u, v = x / s, y / s
        diaphragm = dome + 0.22 * ((u - cu) / 0.45) ** 2  # lower laterally: costophrenic angle
        medial = (u * side) > 0.11
        return outer(x, y) & (v < diaphragm) & medial

    return fn


def _heart_fn(scene: CxrScene):
    s = scene.s
    ru = scene.ctr * 0.92 * s
    return ellipse(
        scene.heart_u * s, scene.heart_v * s, ru, 0.27 * s + 0.25 * ru, scene.heart_angle
    )


def sample(rng: np.random.Generator, abnormal: bool) -> CxrScene:
    s = float(rng.uniform(130, 180))
    rows = int(rng.integers(1500, 3001))
    aspect = float(rng.uniform(0.78, 1.25))  # cols / rows
    cols = int(np.clip(round(rows * aspect), 1500, 3000))
    # field of view: covers the torso width with a margin and at least apex..upper abdomen
    spacing = max(2 * s * rng.uniform(1.2, 1.5) / cols, 2 * s * rng.uniform(1.05, 1.35) / rows)
    offset = (float(rng.uniform(-0.06, 0.06) * cols * spacing), 0.0)
    offset = (offset[0], float(rng.uniform(-0.05, 0.08) * rows * spacing))
    lesions: list[CxrLesion] = []
    codes: list[str] = []
    if abnormal:
        n = 1 if rng.random() < 0.7 else 2
        pool = [*LUNG_FINDINGS, "cardiomegaly"]
        codes = [str(c) for c in rng.choice(pool, size=n, replace=False)]
    ctr = float(rng.uniform(0.6, 0.68)) if "cardiomegaly" in codes else float(rng.uniform(0.4, 0.5))
    scene = CxrScene(
        s=s,
        rows=rows,
        cols=cols,
        spacing=float(spacing),
        offset=offset,
        rotation=float(rng.uniform(-6, 6)),
        ctr=ctr,
        dome_r=float(rng.uniform(0.36, 0.5)),
        dome_l=0.0,
        lung_top=float(rng.uniform(-0.98, -0.86)),
        heart_u=float(rng.uniform(0.08, 0.16)),
        heart_v=0.0,
        heart_angle=float(rng.uniform(-30, -15)),
        exposure=float(rng.uniform(1.1, 1.9)),
        contrast=float(rng.uniform(0.85, 1.15)),
        noise=float(rng.uniform(8, 45)),
        blur_px=float(rng.uniform(0.5, 2.5)),
        lesions=lesions,
    )
    scene.dome_l = scene.dome_r + float(rng.uniform(0.02, 0.09))
    scene.heart_v = scene.dome_r - float(rng.uniform(0.12, 0.2))
    used_sides: set[tuple[str, int]] = set()
    for code in codes:
        if code == "cardiomegaly":
            lesions.append(CxrLesion(code="cardiomegaly", side=0))
            continue
        side = int(rng.choice([-1, 1]))
        while (code, side) in used_sides:
            side = -side
        used_sides.add((code, side))
        lesions.append(_sample_lung_lesion(rng, scene, code, side))
    return scene


def _point_in_lung(rng: np.random.Generator, scene: CxrScene, side: int, vmin: float, vmax: float):
    fn = _lung_fn(scene, side)
    heart = _heart_fn(scene)
    for _ in range(200):
        u = side * float(rng.uniform(0.18, 0.82))
        v = float(rng.uniform(vmin, vmax))
        x, y = np.array([[u * scene.s]]), np.array([[v * scene.s]])
        if fn(x, y)[0, 0] and not heart(x, y)[0, 0]:
            # keep a margin from the lung edge so the lesion reads as intrapulmonary
            ok = all(
                fn(x + dx * scene.s, y + dy * scene.s)[0, 0]
                for dx, dy in ((0.1, 0), (-0.1, 0), (0, 0.1), (0, -0.1))
            )
            if ok:
                return u, v
    return side * 0.5, -0.1


def _sample_lung_lesion(rng: np.random.Generator, scene: CxrScene, code: str, side: int):
    s = scene.s
    if code == "lung_nodule":
        u, v = _point_in_lung(rng, scene, side, scene.lung_top + 0.25, scene.dome_r - 0.05)
        return CxrLesion(code, side, u, v, float(rng.uniform(10, 32)))
    if code == "consolidation":
        u, v = _point_in_lung(rng, scene, side, scene.lung_top + 0.45, scene.dome_r - 0.1)
        size = float(rng.uniform(40, 85))
        blobs = []
        for _ in range(int(rng.integers(3, 6))):
            bu = u + float(rng.normal(0, 0.06))
            bv = v + float(rng.normal(0, 0.06))
            r = size / 2 / s * float(rng.uniform(0.45, 0.75))
            blobs.append((bu, bv, r, r * float(rng.uniform(0.6, 1.0)), float(rng.uniform(0, 180))))
        return CxrLesion(code, side, u, v, size, blobs)
    if code == "pleural_effusion":
        return CxrLesion(code, side, side * 0.5, 0.0, float(rng.uniform(30, 80)))
    # pneumothorax: rim width in mm
    return CxrLesion(code, side, side * 0.5, 0.0, float(rng.uniform(12, 40)))


def _ptx_fn(scene: CxrScene, lesion: CxrLesion, grow_mm: float = 0.0):
    s = scene.s
    side = lesion.side
    lung = _lung_fn(scene, side)
    rim = lesion.size_mm / s
    cu = side * 0.5
    collapsed = superellipse(
        (cu - side * rim * 0.8) * s,
        (scene.lung_top + 0.82 + rim * 0.9) * s,
        (0.43 - rim) * s + grow_mm,
        (0.82 - rim) * s + grow_mm,
        2.3,
    )

    def fn(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        upper = y / s < scene.lung_top + 1.0
        return lung(x, y) & ~collapsed(x, y) & upper

    return fn, collapsed


def _effusion_fn(scene: CxrScene, lesion: CxrLesion):
    s = scene.s
    side = lesion.side
    lung = _lung_fn(scene, side)
    dome = scene.dome_r if side < 0 else scene.dome_l
    h = lesion.size_mm / s
    cu = side * 0.5

    def fn(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u, v = x / s, y / s
        base = dome + 0.22 * ((u - cu) / 0.45) ** 2
        lateral = np.clip((u - cu) * side / 0.45, -1, 1)
        level = base - h * (0.55 + 0.45 * lateral)  # meniscus: fluid climbs the lateral wall
        return lung(x, y) & (v > np.minimum(level, dome + 0.22 - h * 0.6))

    return fn


def render(
    scene: CxrScene, rng: np.random.Generator, max_side: int | None = None
) -> tuple[PhantomImage, list[StudyFinding]]:
    k = 1.0 if max_side is None else min(1.0, max_side / max(scene.rows, scene.cols))
    rows, cols = max(int(round(scene.rows * k)), 8), max(int(round(scene.cols * k)), 8)
    sp_r, sp_c = scene.spacing * scene.rows / rows, scene.spacing * scene.cols / cols
    cv = Canvas(rows, cols, (sp_r, sp_c), scene.offset, scene.rotation, fill=0.0)
    s = scene.s
    big = (-3 * s, -3 * s, 3 * s, 3 * s)
    px_mm = sp_c

    # attenuation (arbitrary units ~ water-equivalent path)
    torso = superellipse(0, 0.25 * s, 1.12 * s, 1.55 * s, 3.0)
    neck = superellipse(0, -1.2 * s, 0.32 * s, 0.5 * s, 4.0)
    shoulders = superellipse(0, -0.82 * s, 1.2 * s, 0.3 * s, 2.5)
    body = cv.mask(lambda x, y: torso(x, y) | neck(x, y) | shoulders(x, y), big)
    cv.paint(body, 1.0)
    lung_box = (-1.0 * s, (scene.lung_top - 0.05) * s, 1.0 * s, (scene.dome_l + 0.3) * s)
    lungs = [cv.mask(_lung_fn(scene, side), lung_box) for side in (-1, 1)]
    heart_fn = _heart_fn(scene)
    vessels = smooth_noise(rng, (rows, cols), 6.0 / px_mm, octaves=2)
    for lung in lungs:
        tex = cv.texture(lung, vessels)
        cv.paint(lung, -0.62 + 0.05 * np.clip(tex, -2, 3), mode="add")
    # mediastinum and spine: soft tissue band between the lungs
    med_w = 0.14
    med_fn = superellipse(0.02 * s, (scene.lung_top + 0.7) * s, med_w * s, 0.7 * s, 6.0)
    hr = (scene.ctr * 0.92 + 0.3) * s
    heart_box = ellipse_bbox(scene.heart_u * s, scene.heart_v * s, hr, hr)
    heart = cv.mask(heart_fn, heart_box)
    cv.paint(heart, 0.55, mode="add")
    med_box = (-0.2 * s, (scene.lung_top - 0.05) * s, 0.2 * s, (scene.lung_top + 1.45) * s)
    cv.paint(cv.mask(med_fn, med_box), 0.25, mode="add")
    spine_fn = superellipse(0, 0.3 * s, 0.075 * s, 2.0 * s, 8.0)
    spine = cv.mask(spine_fn, (-0.1 * s, -1.8 * s, 0.1 * s, 2.4 * s))
    cv.paint(spine, 0.3, mode="add")
    for i in range(-12, 16):
        vc = i * 0.13
        vb = (-0.08 * s, (vc - 0.06) * s, 0.08 * s, (vc + 0.06) * s)
        cv.paint(cv.mask(ellipse(0, vc * s, 0.07 * s, 0.05 * s), vb), 0.12, mode="add")
    trachea_fn = superellipse(0.01 * s, (scene.lung_top - 0.15) * s, 0.045 * s, 0.55 * s, 4.0)
    trachea_box = (-0.06 * s, (scene.lung_top - 0.75) * s, 0.08 * s, (scene.lung_top + 0.45) * s)
    trachea = cv.mask(trachea_fn, trachea_box)
    cv.paint(trachea, -0.25, mode="add")
    # ribs: posterior arcs over each lung
    for side in (-1, 1):
        for i in range(10):
            v0 = scene.lung_top + 0.12 + i * 0.145

            def rib(x: np.ndarray, y: np.ndarray, v0: float = v0, side: int = side) -> np.ndarray:
                u, v = x / s, y / s
                au = np.clip(u * side, 0, None)
                centre = v0 + 0.18 * au**1.6 - 0.1 * au
                return (np.abs(v - centre) < 0.028) & (au > 0.08) & (au < 1.02)

            rb = (min(0, side * 1.05) * s, (v0 - 0.2) * s, max(0, side * 1.05) * s, (v0 + 0.3) * s)
            cv.paint(cv.mask(rib, rb), 0.22, mode="add")
    # clavicles
    clav_fns = []
    for side in (-1, 1):
        mu, mv = side * 0.12, scene.lung_top + 0.02
        lu, lv = side * 0.88, scene.lung_top - 0.12
        cu, cvv = (mu + lu) / 2, (mv + lv) / 2
        ang = math.degrees(math.atan2(lv - mv, lu - mu))
        half = math.hypot(lu - mu, lv - mv) / 2
        fn = ellipse(cu * s, cvv * s, half * s, 0.045 * s, ang)
        clav_fns.append(fn)
        cv.paint(cv.mask(fn, ellipse_bbox(cu * s, cvv * s, half * s, half * s)), 0.55, mode="add")
    # hila: vessel bundles near the medial mid lung
    hila_fns = []
    for side in (-1, 1):
        fn = ellipse(side * 0.25 * s, (scene.heart_v - 0.33 - 0.04 * side) * s, 0.09 * s, 0.14 * s)
        hila_fns.append(fn)
        hm = cv.mask(fn, (-0.4 * s, -1.2 * s, 0.4 * s, 0.6 * s))
        cv.paint(hm, 0.18 + 0.06 * np.clip(cv.texture(hm, vessels), -2, 2), mode="add")

    # upper abdomen under the domes, with a gastric bubble
    def abdomen_fn(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u, v = x / s, y / s
        dome = np.where(u < 0.05, scene.dome_r, scene.dome_l)
        return torso(x, y) & (v > dome + 0.22 * ((np.abs(u) - 0.5) / 0.45) ** 2 * (np.abs(u) > 0.5))

    abdomen = cv.mask(abdomen_fn, big)
    cv.paint(abdomen, 0.12, mode="add")
    bubble = ellipse(0.45 * s, (scene.dome_l + 0.12) * s, 0.12 * s, 0.07 * s)
    cv.paint(
        cv.mask(bubble, ellipse_bbox(0.45 * s, (scene.dome_l + 0.12) * s, 0.12 * s, 0.12 * s)),
        -0.35,
        mode="add",
    )

    findings: list[FindingBox] = []
    study_findings: list[StudyFinding] = []
    for lesion in scene.lesions:
        region = "right_lung" if lesion.side < 0 else "left_lung"
        if lesion.code == "lung_nodule":
            r = lesion.size_mm / 2
            m = cv.mask(
                ellipse(lesion.u * s, lesion.v * s, r, r * 0.95),
                ellipse_bbox(lesion.u * s, lesion.v * s, r, r),
            )
            cv.paint(m, 0.32, mode="add")
        elif lesion.code == "consolidation":
            fns = [ellipse(a * s, b * s, ra * s, rb * s, ang) for a, b, ra, rb, ang in lesion.blobs]
            lung_fn = _lung_fn(scene, lesion.side)
            m = cv.mask(
                lambda x, y, fns=fns, lf=lung_fn: lf(x, y) & np.any([f(x, y) for f in fns], axis=0),
                big,
            )
            cv.paint(m, 0.3 + 0.06 * np.clip(cv.texture(m, vessels), -2, 2), mode="add")
        elif lesion.code == "pleural_effusion":
            m = cv.mask(_effusion_fn(scene, lesion), big)
            cv.paint(m, 0.55, mode="add")
        elif lesion.code == "pneumothorax":
            fn, _ = _ptx_fn(scene, lesion)
            m = cv.mask(fn, big)
            # no lung markings beyond the pleural line: remove the vessel texture, darken
            cv.paint(m, -0.05 * np.clip(cv.texture(m, vessels), -2, 3) - 0.08, mode="add")
            # the visceral pleural line: a thin bright shell just outside the collapsed lung
            _, collapsed = _ptx_fn(scene, lesion)
            rim_line = _ptx_fn(scene, lesion, grow_mm=2.5 * px_mm)[1]
            lung_fn = _lung_fn(scene, lesion.side)
            line = cv.mask(
                lambda x, y, a=rim_line, b=collapsed, lf=lung_fn: lf(x, y) & a(x, y) & ~b(x, y), big
            )
            cv.paint(line, 0.12, mode="add")
        else:  # cardiomegaly: the enlarged heart is already drawn; the finding box is the heart
            region = "cardiac_silhouette"
            m = cv.mask(
                lambda x, y: heart_fn(x, y) & (y / s < max(scene.dome_r, scene.dome_l) + 0.05),
                heart_box,
            )
        box = m.box()
        if box is None:
            continue
        size = lesion.size_mm
        if lesion.code == "cardiomegaly":
            size = (box[2] - box[0]) * sp_c
        elif lesion.code == "consolidation":
            size = max(box[2] - box[0], box[3] - box[1]) * sp_c
        findings.append(FindingBox(lesion.code, region, box, round(float(size), 1)))
        study_findings.append(StudyFinding(lesion.code, region, round(float(size), 1)))

    # exposure curve to display values, then detector blur and noise
    att = cv.img * scene.contrast
    display = (
        4095.0
        * (1.0 - np.exp(-scene.exposure * np.clip(att, 0, None)))
        / (1.0 - math.exp(-scene.exposure * 2.2))
    )
    display = finish(display.astype(np.float32), rng, scene.blur_px * k, scene.noise * k)
    display = np.clip(display + 60.0, 0, 4095).astype(np.float32)

    regions: list[RegionBox] = []

    def add(code: str, m: Mask) -> None:
        b = m.box()
        if b is not None and (b[2] - b[0]) * sp_c >= 4 and (b[3] - b[1]) * sp_r >= 4:
            regions.append(RegionBox(code, b))

    add("right_lung", lungs[0])
    add("left_lung", lungs[1])
    dome_max = max(scene.dome_r, scene.dome_l)
    add(
        "mediastinum",
        cv.mask(
            lambda x, y: (
                med_fn(x, y)
                | (heart_fn(x, y) & (y / s < dome_max)) & (np.abs(x / s - 0.02) < med_w)
            ),
            med_box,
        ),
    )
    add(
        "cardiac_silhouette",
        cv.mask(lambda x, y: heart_fn(x, y) & (y / s < dome_max + 0.05), heart_box),
    )
    hila_box = (-0.4 * s, -1.2 * s, 0.4 * s, 0.6 * s)
    add("right_hilar", cv.mask(hila_fns[0], hila_box))
    add("left_hilar", cv.mask(hila_fns[1], hila_box))
    clav_box = (-1.0 * s, (scene.lung_top - 0.4) * s, 1.0 * s, (scene.lung_top + 0.3) * s)
    add("right_clavicle", cv.mask(clav_fns[0], clav_box))
    add("left_clavicle", cv.mask(clav_fns[1], clav_box))
    for side, code in ((-1, "right_hemidiaphragm"), (1, "left_hemidiaphragm")):
        dome = scene.dome_r if side < 0 else scene.dome_l
        cu = side * 0.5

        def hemi(
            x: np.ndarray, y: np.ndarray, dome: float = dome, cu: float = cu, side: int = side
        ):
            u, v = x / s, y / s
            curve = dome + 0.22 * ((u - cu) / 0.45) ** 2
            inside = (u * side > 0.05) & (u * side < 0.93)
            return inside & (np.abs(v - curve) < 0.035) & ~(heart_fn(x, y) & (side > 0))

        add(code, cv.mask(hemi, (-1.0 * s, (dome - 0.1) * s, 1.0 * s, (dome + 0.35) * s)))
    ru = scene.ctr * 0.92

    def right_atrium(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u, v = x / s, y / s
        return (
            heart_fn(x, y)
            & (u < scene.heart_u - 0.3 * ru)
            & (v > scene.heart_v - 0.12)
            & (v < dome_max + 0.05)
        )

    add("right_atrium", cv.mask(right_atrium, heart_box))
    add("abdomen", abdomen)
    add("trachea", trachea)
    add("spine", spine)

    # window on the patient, not the collimated air around it
    sub = display[::4, ::4]
    inside = sub[sub > np.percentile(sub, 5) + 300]
    lo, hi = np.percentile(inside if inside.size > 100 else sub, [1, 99.5])
    return PhantomImage(
        pixels=display,
        pixel_spacing_mm=(sp_r, sp_c),
        window=(float((lo + hi) / 2), float(max(hi - lo, 100.0) * 1.05)),
        regions=regions,
        findings=findings,
    ), study_findings
