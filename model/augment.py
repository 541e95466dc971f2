"""Training augmentations for what differs between scanners and sites, in model-input space.

The cached training images are already preprocessed (shared.inference.preprocess), so each
variation is applied the way it would reach the model through that same preprocessing:

- X-ray: another VOI window (shifted, narrower, wider) and a vendor's contrast curve, then the
  image's own percentile stretch again (what `normalise` does to a DICOM X-ray);
- MR: a contrast curve, then the percentile stretch (the header window never reaches the model);
- CT: the header window never reaches the model either, but a CT that arrives as display values
  (a rendered PNG, no modality) does: sometimes the HU are recovered from the model's CT curve
  and shown through a site's window preset, then stretched — the `normalise` rule for those;
- every domain: blur / sharpening kernels, noise (CT: in Hounsfield units), lower resolution,
  collimation bands, a crop (re-letterboxed, boxes follow) and small rotations (boxes become the
  rotated boxes' bounds).

Images are (S, S) float32 in [0, 1]; boxes are normalised model-frame (x1, y1, x2, y2);
`content` is the letterbox's content box in model pixels (where the image sits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from shared.inference.preprocess import CT_WINDOWS, PERCENTILES, apply_window, ct_curve

MODALITY = {"cxr": "DX", "chest_ct": "CT", "abd_ct": "CT", "brain_mr": "MR"}
# The strongest CT noise drawn, HU (sigma per pixel). Up to 1.3.0 it was 70 HU: above the
# contrast of the abdominal lesions the phantoms draw (kidney lesion 23 HU below the kidney,
# pancreatic mass 45 HU below the pancreas), so the hardest draws taught lesions nobody could
# see. The evaluation's noisiest CT (model.shifts: 8 % of a 400 HU window, a 35 HU low-dose scan)
# stays inside the range.
CT_NOISE_MAX_HU = 50.0
# Share of the images given a kernel / resolution variation that also get noise (at strength 1;
# it grows with `augment`'s strength up to NOISE_RATE_MAX: a domain whose lesions are lost to
# noise, the abdominal CT, sees noisy images more often).
NOISE_RATE = 0.45
NOISE_RATE_MAX = 0.9
# Window presets a site may send with a CT (center, width), HU.
CT_PRESETS = ((40, 400), (-600, 1500), (50, 350), (60, 160), (-500, 1400), (400, 1800))

_HU_GRID = np.linspace(
    CT_WINDOWS[0][0] - CT_WINDOWS[0][1] / 2, CT_WINDOWS[1][0] + CT_WINDOWS[1][1] / 2, 4096
).astype(np.float32)
_CT_VALUES = ct_curve(_HU_GRID)


def hu_from_ct_input(x: np.ndarray) -> np.ndarray:
    """Invert the model's CT curve (exact inside its range, clipped outside)."""
    return np.interp(x, _CT_VALUES, _HU_GRID).astype(np.float32)


@dataclass
class Sample:
    image: np.ndarray  # (S, S) float32 [0, 1]
    region_boxes: np.ndarray  # (R, 4)
    region_present: np.ndarray  # (R,) bool
    lesion_boxes: np.ndarray  # (L, 4)
    lesion_classes: np.ndarray  # (L,) -1 = none
    content: tuple[int, int, int, int]  # x1, y1, x2, y2 model pixels


def stretch_content(x: np.ndarray, content: tuple[int, int, int, int]) -> np.ndarray:
    """The percentile stretch of `normalise`, measured on the content (not the padding)."""
    x1, y1, x2, y2 = content
    inner = x[y1:y2, x1:x2]
    if inner.size == 0:
        return x
    lo, hi = np.percentile(inner[::2, ::2], PERCENTILES)
    if hi - lo < 1e-4:
        lo, hi = float(inner.min()), float(inner.max())
    out = np.zeros_like(x)
    if hi - lo > 1e-6:
        out[y1:y2, x1:x2] = np.clip((inner - lo) / (hi - lo), 0, 1)
    return out


def contrast_curve(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A vendor's tone curve: gamma, or an S-curve, monotone on [0, 1]."""
    if rng.random() < 0.6:
        return np.power(np.clip(x, 0, 1), np.float32(np.exp(rng.uniform(-0.75, 0.75))))
    k = rng.uniform(3, 9)
    mid = rng.uniform(0.35, 0.65)
    lo, hi = 1 / (1 + np.exp(k * mid)), 1 / (1 + np.exp(-k * (1 - mid)))
    return ((1 / (1 + np.exp(-k * (x - mid))) - lo) / (hi - lo)).astype(np.float32)


def _intensity(s: Sample, domain: str, rng: np.random.Generator) -> None:
    x, c = s.image, s.content
    modality = MODALITY[domain]
    if modality == "CT":
        if rng.random() < 0.25:  # arrived as display values, shown with a site's preset
            center, width = CT_PRESETS[int(rng.integers(len(CT_PRESETS)))]
            center += rng.uniform(-0.1, 0.1) * width
            width *= rng.uniform(0.8, 1.25)
            hu = hu_from_ct_input(x)
            shown = apply_window(hu, center, width)
            if rng.random() < 0.3:
                shown = contrast_curve(shown, rng)
            s.image = stretch_content(shown, c)
        return
    if modality == "DX" and rng.random() < 0.6:  # another VOI window
        width = rng.uniform(0.45, 1.4)
        center = 0.5 + rng.uniform(-0.25, 0.25) * width
        x = apply_window(x, center, width)
    if rng.random() < 0.6:
        x = contrast_curve(x, rng)
    s.image = stretch_content(x, c)


def _resize(x: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(x, mode="F").resize((w, h), Image.Resampling.BILINEAR))


def _noise(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Unit-variance noise, white or correlated over about a pixel (reconstructed CT, MR and
    detector noise is correlated; white noise is the digital floor)."""
    n = rng.standard_normal(shape).astype(np.float32)
    if rng.random() < 0.5:
        n = ndimage.gaussian_filter(n, rng.uniform(0.5, 1.2))
        n /= max(float(n.std()), 1e-6)
    return n


def _add_noise(x: np.ndarray, domain: str, s: Sample, rng: np.random.Generator) -> np.ndarray:
    """Dose, exposure, coil: CT noise in Hounsfield units (low-dose scans: up to CT_NOISE_MAX_HU)
    seen through the model's CT curve; X-ray / MR noise up to 12 % of the range, then (as
    `normalise` would on the noisier image) sometimes the image's own stretch again."""
    if MODALITY[domain] == "CT":
        hu = hu_from_ct_input(x) + rng.uniform(5, CT_NOISE_MAX_HU) * _noise(x.shape, rng)
        return ct_curve(hu)
    sigma = float(np.exp(rng.uniform(np.log(0.005), np.log(0.12))))
    x = x + sigma * _noise(x.shape, rng)
    if rng.random() < 0.5:
        return _restretch(x, s)
    return x


def _restretch(x: np.ndarray, s: Sample) -> np.ndarray:
    """`normalise`'s own-range stretch of an image whose pixels changed before it (noise,
    a sharper kernel): undershoot below the old black lifts the background to grey, as
    it does when a site's MR or X-ray arrives that way."""
    return stretch_content(x, s.content)


def _quality(
    s: Sample, domain: str, rng: np.random.Generator, noise_rate: float = NOISE_RATE
) -> None:
    x = s.image
    x1, y1, x2, y2 = s.content
    r = rng.random()
    if r < 0.25:  # softer kernel / detector blur
        x = ndimage.gaussian_filter(x, rng.uniform(0.4, 2.5))
    elif r < 0.45:  # sharper kernel (before the stretch for X-ray / MR, as a site's is)
        sigma = rng.uniform(0.7, 1.5)
        x = x + rng.uniform(0.3, 2.2) * (x - ndimage.gaussian_filter(x, sigma))
        if MODALITY[domain] != "CT" and rng.random() < 0.5:
            x = _restretch(x, s)
    if rng.random() < 0.2:  # lower resolution
        w, h = x2 - x1, y2 - y1
        f = rng.uniform(0.35, 0.8)
        if w > 8 and h > 8:
            small = _resize(
                np.ascontiguousarray(x[y1:y2, x1:x2]), max(4, int(w * f)), max(4, int(h * f))
            )
            x = x.copy()
            x[y1:y2, x1:x2] = _resize(small, w, h)
    if rng.random() < noise_rate:  # noise (dose, exposure, coil)
        x = _add_noise(x, domain, s, rng)
    out = np.zeros_like(s.image)
    out[y1:y2, x1:x2] = np.clip(x[y1:y2, x1:x2], 0, 1)
    s.image = out


def _collimate(s: Sample, rng: np.random.Generator) -> None:
    """Bands along the edges, as shutters or collimator blades leave them."""
    x1, y1, x2, y2 = s.content
    value = float(rng.choice([0.0, 1.0, rng.uniform(0, 1)]))
    for side in range(4):
        if rng.random() < 0.5:
            continue
        if side == 0:
            d = int((x2 - x1) * rng.uniform(0.02, 0.08))
            s.image[y1:y2, x1 : x1 + d] = value
        elif side == 1:
            d = int((x2 - x1) * rng.uniform(0.02, 0.08))
            s.image[y1:y2, x2 - d : x2] = value
        elif side == 2:
            d = int((y2 - y1) * rng.uniform(0.02, 0.08))
            s.image[y1 : y1 + d, x1:x2] = value
        else:
            d = int((y2 - y1) * rng.uniform(0.02, 0.08))
            s.image[y2 - d : y2, x1:x2] = value


def _crop(s: Sample, rng: np.random.Generator) -> None:
    """Crop to a smaller field of view that keeps every lesion, then letterbox it again."""
    size = s.image.shape[0]
    x1, y1, x2, y2 = s.content
    keep = s.lesion_classes >= 0
    les = s.lesion_boxes[keep] * size
    cw, ch = (x2 - x1) * rng.uniform(0.75, 0.95), (y2 - y1) * rng.uniform(0.75, 0.95)
    lo_x, hi_x = x1, x2 - cw
    lo_y, hi_y = y1, y2 - ch
    if len(les):  # the crop must contain every lesion
        lo_x, hi_x = max(lo_x, les[:, 2].max() - cw), min(hi_x, les[:, 0].min())
        lo_y, hi_y = max(lo_y, les[:, 3].max() - ch), min(hi_y, les[:, 1].min())
    if hi_x < lo_x or hi_y < lo_y:
        return
    cx1, cy1 = int(rng.uniform(lo_x, hi_x)), int(rng.uniform(lo_y, hi_y))
    cx2, cy2 = int(np.ceil(cx1 + cw)), int(np.ceil(cy1 + ch))
    crop = np.ascontiguousarray(s.image[cy1:cy2, cx1:cx2])
    h, w = crop.shape
    scale = size / max(h, w)
    nw, nh = min(size, max(1, round(w * scale))), min(size, max(1, round(h * scale)))
    ox, oy = (size - nw) // 2, (size - nh) // 2
    out = np.zeros_like(s.image)
    out[oy : oy + nh, ox : ox + nw] = _resize(crop, nw, nh)
    sx, sy = nw / w, nh / h

    def move(b: np.ndarray) -> np.ndarray:
        p = b * size
        p[..., 0::2] = np.clip((p[..., 0::2] - cx1) * sx + ox, ox, ox + nw)
        p[..., 1::2] = np.clip((p[..., 1::2] - cy1) * sy + oy, oy, oy + nh)
        return (p / size).astype(np.float32)

    before = _area(s.region_boxes)
    s.region_boxes = move(s.region_boxes)
    # a region mostly cut away is no longer 'visible' for the presence head
    s.region_present = s.region_present & (_area(s.region_boxes) * (sx * sy) >= 0.4 * before)
    s.lesion_boxes = np.where(keep[:, None], move(s.lesion_boxes), s.lesion_boxes)
    s.image = out
    s.content = (ox, oy, ox + nw, oy + nh)


def _area(b: np.ndarray) -> np.ndarray:
    return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)


def _rotate(s: Sample, rng: np.random.Generator) -> None:
    size = s.image.shape[0]
    angle = rng.uniform(-4, 4)
    x1, y1, x2, y2 = s.content
    s.image = ndimage.rotate(s.image, angle, reshape=False, order=1, mode="constant", cval=0.0)
    s.image[:y1] = 0
    s.image[y2:] = 0
    s.image[:, :x1] = 0
    s.image[:, x2:] = 0
    # scipy rotates counter-clockwise on screen for positive angles (row axis down)
    a = np.deg2rad(angle)
    ca, sa = np.cos(a), np.sin(a)
    centre = size / 2

    def move(b: np.ndarray) -> np.ndarray:
        p = b * size
        xs = p[..., [0, 2, 2, 0]] - centre
        ys = p[..., [1, 1, 3, 3]] - centre
        rx = ca * xs + sa * ys + centre
        ry = -sa * xs + ca * ys + centre
        out = np.stack([rx.min(-1), ry.min(-1), rx.max(-1), ry.max(-1)], -1)
        out[..., 0::2] = np.clip(out[..., 0::2], x1, x2)
        out[..., 1::2] = np.clip(out[..., 1::2], y1, y2)
        return (out / size).astype(np.float32)

    keep = s.lesion_classes >= 0
    s.region_boxes = np.where(s.region_present[:, None], move(s.region_boxes), s.region_boxes)
    s.lesion_boxes = np.where(keep[:, None], move(s.lesion_boxes), s.lesion_boxes)


def augment(s: Sample, domain: str, rng: np.random.Generator, strength: float = 1.0) -> Sample:
    """Apply a random set of site variations in place (and return the sample)."""
    if rng.random() < 0.1 * strength:
        _crop(s, rng)
    if rng.random() < 0.1 * strength:
        _rotate(s, rng)
    if rng.random() < 0.8 * strength:
        _intensity(s, domain, rng)
    if rng.random() < 0.6 * strength:
        _quality(s, domain, rng, min(NOISE_RATE_MAX, NOISE_RATE * strength))
    if rng.random() < 0.08 * strength:
        _collimate(s, rng)
    return s
