"""What differs between scanners and sites, applied to a test phantom in SOURCE space, the way
it would reach the worker: other pixels, another window in the header, another modality path.
Ground-truth boxes are unchanged except where the matrix itself changes (half resolution).

Each shift is named `kind:strength`; `apply(name, domain, image)` returns what the runtime is
handed, `(pixels, center, width, modality)`, and the factor the ground-truth boxes scale by.
The parameters are this project's own choice (see each function); they are not tuned to the
training augmentations (model.augment), which draw from other ranges and other code.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from scipy import ndimage

from model.augment import MODALITY
from model.phantoms.dicom_writer import PixelStorage, encode_pixels
from model.phantoms.types import PhantomImage
from shared.dicom.pixels import frames_from_dataset

Shifted = tuple[np.ndarray, float, float, str | None]
ShiftFn = Callable[[str, PhantomImage, np.random.Generator], tuple[Shifted, float] | None]


def _range01(x: np.ndarray) -> tuple[np.ndarray, float, float]:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / max(hi - lo, 1e-6), lo, hi


def _model_px(img: PhantomImage) -> float:
    """Source pixels per model-input pixel (256 on the long side)."""
    return max(img.pixels.shape) / 256.0


def contrast(gamma: float) -> ShiftFn:
    """A vendor's tone curve on X-ray / MR grey levels (CT numbers are calibrated: not bent)."""

    def fn(domain: str, img: PhantomImage, rng: np.random.Generator):
        if MODALITY[domain] == "CT":
            return None
        u, lo, hi = _range01(img.pixels)
        bent = (lo + (hi - lo) * np.power(u, gamma)).astype(np.float32)
        # the header window follows the curve, as a vendor's processing would set it
        c, w = img.window
        a = lo + (hi - lo) * float(np.power(np.clip((c - w / 2 - lo) / (hi - lo), 0, 1), gamma))
        b = lo + (hi - lo) * float(np.power(np.clip((c + w / 2 - lo) / (hi - lo), 0, 1), gamma))
        return (bent, (a + b) / 2, max(b - a, 1.0), MODALITY[domain]), 1.0

    return fn


def window(kind: str) -> ShiftFn:
    """Another window preset in the header, pixels untouched."""

    def fn(domain: str, img: PhantomImage, rng: np.random.Generator):
        c, w = img.window
        if MODALITY[domain] == "CT":
            c, w = {"chest_ct": (40.0, 400.0), "abd_ct": (-600.0, 1500.0)}[domain]
            if kind == "narrow":
                c, w = {"chest_ct": (-700.0, 1000.0), "abd_ct": (60.0, 160.0)}[domain]
        elif kind == "narrow":
            w = w * 0.55
        else:
            c, w = c + 0.2 * w, w * 0.8
        return (img.pixels, c, w, MODALITY[domain]), 1.0

    return fn


def blur(sigma_model_px: float) -> ShiftFn:
    """A smoother reconstruction kernel / detector blur (sigma in model-input pixels)."""

    def fn(domain: str, img: PhantomImage, rng: np.random.Generator):
        sigma = sigma_model_px * _model_px(img)
        out = ndimage.gaussian_filter(img.pixels, sigma, truncate=3.0)
        return (out.astype(np.float32), *img.window, MODALITY[domain]), 1.0

    return fn


def sharpen(amount: float) -> ShiftFn:
    """A sharper kernel: unsharp masking at one model pixel."""

    def fn(domain: str, img: PhantomImage, rng: np.random.Generator):
        p = img.pixels
        soft = ndimage.gaussian_filter(p, _model_px(img), truncate=3.0)
        return ((p + amount * (p - soft)).astype(np.float32), *img.window, MODALITY[domain]), 1.0

    return fn


def noise(fraction: float) -> ShiftFn:
    """Extra noise (low dose, fewer averages), sigma as a fraction of the header window width,
    correlated over about half a model pixel as real detector / reconstruction noise is."""

    def fn(domain: str, img: PhantomImage, rng: np.random.Generator):
        n = rng.standard_normal(img.pixels.shape).astype(np.float32)
        k = 0.5 * _model_px(img)
        if k > 0.6:
            n = ndimage.gaussian_filter(n, k)
            n /= max(float(n.std()), 1e-6)
        out = img.pixels + fraction * img.window[1] * n
        return (out.astype(np.float32), *img.window, MODALITY[domain]), 1.0

    return fn


def exposure(gain: float) -> ShiftFn:
    """Lower exposure / receive gain: X-ray and MR signal scaled by `gain` with relatively more
    quantum noise; the modality sets its window from the image as before (it scales too). CT: a
    low-dose scan (extra noise of about 35 HU, correlated like reconstructed noise)."""

    def fn(domain: str, img: PhantomImage, rng: np.random.Generator):
        n = rng.standard_normal(img.pixels.shape).astype(np.float32)
        if MODALITY[domain] == "CT":
            n = ndimage.gaussian_filter(n, 0.7)
            out = img.pixels + 35.0 * n / max(float(n.std()), 1e-6)
            return (out.astype(np.float32), *img.window, "CT"), 1.0
        lo = float(img.pixels.min())
        c, w = img.window
        out = lo + (img.pixels - lo) * gain + 0.02 * w * gain * n
        window = (lo + (c - lo) * gain, w * gain)
        return (out.astype(np.float32), *window, MODALITY[domain]), 1.0

    return fn


def half_resolution(domain: str, img: PhantomImage, rng: np.random.Generator):
    """Half the matrix (2×2 mean): boxes scale by 0.5."""
    p = img.pixels
    r, c = (p.shape[0] // 2) * 2, (p.shape[1] // 2) * 2
    small = p[:r, :c].reshape(r // 2, 2, c // 2, 2).mean(axis=(1, 3))
    return (small.astype(np.float32), *img.window, MODALITY[domain]), 0.5


def collimation(domain: str, img: PhantomImage, rng: np.random.Generator):
    """Collimator blades / shutters: 7 % bands on all four edges at the image's brightest value
    (X-ray; cross-sectional images get their darkest, like a smaller reconstruction circle)."""
    p = img.pixels.copy()
    r, c = p.shape
    dr, dc = max(1, int(0.07 * r)), max(1, int(0.07 * c))
    value = float(p.max()) if MODALITY[domain] == "DX" else float(p.min())
    p[:dr], p[-dr:], p[:, :dc], p[:, -dc:] = value, value, value, value
    return (p, *img.window, MODALITY[domain]), 1.0


def monochrome1(domain: str, img: PhantomImage, rng: np.random.Generator):
    """An X-ray stored MONOCHROME1 (inverted, window moved as PS3.3 says), read back by the
    worker's own reader (shared.dicom.pixels)."""
    if MODALITY[domain] != "DX":
        return None
    storage = PixelStorage(bits_stored=12, signed=False, rescale_intercept=0.0, monochrome1=True)
    stored = encode_pixels(img.pixels, storage)
    ds = Dataset()
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.Rows, ds.Columns = (int(v) for v in stored.shape)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter = f"{storage.stored_max + 1 - img.window[0]:.2f}"
    ds.WindowWidth = f"{img.window[1]:.2f}"
    ds.PixelData = stored.tobytes()
    (frame,) = frames_from_dataset(ds)
    return (frame.pixels, *frame.window, "DX"), 1.0


def display_png(domain: str, img: PhantomImage, rng: np.random.Generator):
    """What the MedRegA-protocol server receives: an 8-bit picture rendered with the header's
    window, no modality, no units."""
    c, w = img.window
    u8 = np.rint(np.clip((img.pixels - (c - w / 2)) / w, 0, 1) * 255).astype(np.float32)
    return (u8, 127.5, 255.0, None), 1.0


SHIFTS: dict[str, ShiftFn] = {
    "contrast:gamma0.6": contrast(0.6),
    "contrast:gamma1.7": contrast(1.7),
    "window:other": window("other"),
    "window:narrow": window("narrow"),
    "blur:1.0": blur(1.0),
    "blur:2.0": blur(2.0),
    "sharpen:1.5": sharpen(1.5),
    "noise:0.03": noise(0.03),
    "noise:0.08": noise(0.08),
    "exposure:0.6": exposure(0.6),
    "resolution:half": half_resolution,
    "collimation:7%": collimation,
    "monochrome1": monochrome1,
    "display_png": display_png,
}


def apply(name: str, domain: str, img: PhantomImage, rng: np.random.Generator):
    """(pixels, center, width, modality) and the box scale, or None where the shift does not
    apply to this domain."""
    return SHIFTS[name](domain, img, rng)
