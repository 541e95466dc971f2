"""Real non-phantom inputs for the OOD check: the DICOM test images shipped *inside* the
installed pydicom package (never its downloadable extras), plus pure noise."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np

OodImage = tuple[str, np.ndarray, float, float]  # name, physical pixels, window center, width


def _window(ds, arr: np.ndarray) -> tuple[float, float]:
    wc, ww = ds.get("WindowCenter"), ds.get("WindowWidth")
    try:
        if wc is not None and ww is not None:
            c = float(wc[0] if hasattr(wc, "__len__") and not isinstance(wc, str) else wc)
            w = float(ww[0] if hasattr(ww, "__len__") and not isinstance(ww, str) else ww)
            if w > 0:
                return c, w
    except (TypeError, ValueError):
        pass
    lo, hi = float(arr.min()), float(arr.max())
    return (lo + hi) / 2, max(hi - lo, 1.0)


def pydicom_images() -> list[OodImage]:
    """Every distinct 2D image (first frame, luminance for colour) among pydicom's bundled
    test files. Duplicates (the same pixels in another transfer syntax) are counted once."""
    return [(name, arr, c, w) for name, arr, c, w, _ in pydicom_images_with_modality()]


def pydicom_images_with_modality() -> list[tuple[str, np.ndarray, float, float, str | None]]:
    """`pydicom_images` with each file's Modality (None when it has none): the worker hands
    the runtime that modality, so the OOD gate is tried on the path each file would take."""
    import pydicom
    from pydicom.pixels import apply_rescale

    root = Path(pydicom.__file__).parent / "data" / "test_files"
    seen: set[str] = set()
    out: list[tuple[str, np.ndarray, float, float, str | None]] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, force=True)
                if "PixelData" not in ds:
                    continue
                arr = np.asarray(ds.pixel_array)
        except Exception:
            continue
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            arr = arr[0]
        if arr.ndim == 3:  # colour → luminance
            arr = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        if arr.ndim != 2:
            continue
        key = hashlib.sha1(np.ascontiguousarray(arr).tobytes()).hexdigest()
        if key in seen:
            continue
        seen.add(key)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            phys = np.asarray(apply_rescale(arr, ds), np.float32) if "RescaleSlope" in ds else arr
        phys = np.asarray(phys, np.float32)
        if ds.get("PhotometricInterpretation") == "MONOCHROME1":
            phys = phys.max() + phys.min() - phys
        c, w = _window(ds, phys)
        modality = str(ds.get("Modality", "") or "") or None
        out.append((str(path.relative_to(root)), phys, c, w, modality))
    return out


def noise_images(n: int, seed: int = 7) -> list[OodImage]:
    rng = np.random.default_rng(seed)
    out: list[OodImage] = []
    for i in range(n):
        rows, cols = (int(v) for v in rng.integers(128, 1024, 2))
        if i % 2:
            arr = rng.normal(rng.uniform(-500, 500), rng.uniform(1, 500), (rows, cols))
        else:
            arr = rng.uniform(0, rng.uniform(10, 4096), (rows, cols))
        arr = arr.astype(np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        out.append((f"noise-{i}", arr, (lo + hi) / 2, max(hi - lo, 1.0)))
    return out
