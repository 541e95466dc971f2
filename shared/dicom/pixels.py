"""From a stored DICOM instance to physical pixel values the model (and the UI renderer) can use.

Applies the modality LUT (rescale slope/intercept: HU for CT), reads the VOI window (or derives a
sensible one), turns MONOCHROME1 into the MONOCHROME2 sense (higher = brighter) and splits
multi-frame images into frames. An image whose VOI is a LUT (VOI LUT Sequence, the non-linear
tone curve a for-presentation X-ray may carry) and no window has that LUT applied with pydicom's
`apply_voi_lut`, as the standard says: its values are then the LUT's output. Compressed transfer syntaxes decode through pydicom's pixel
handlers (pylibjpeg, openjpeg, RLE). Anything that cannot become a grey-level image raises
`PixelDataUnsupported` with a reason a radiologist or PACS admin can read; the worker records it
as the study's 'not applicable' reason instead of crashing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_rescale, apply_voi_lut

# Percentiles that make a default window when the instance carries none.
DEFAULT_WINDOW_PERCENTILES = (1.0, 99.0)


class PixelDataUnsupported(ValueError):
    """The instance's pixel data can't be turned into a grey-level image; `str()` says why."""


@dataclass(frozen=True)
class DecodedFrame:
    pixels: np.ndarray  # float32 (rows, cols), physical units, higher = brighter
    window: tuple[float, float]  # (center, width) in the same units
    sop_instance_uid: str
    sop_class_uid: str
    frame: int  # 1-based
    pixel_spacing_mm: tuple[float, float] | None  # (row, column)


def _first(value: object) -> float:
    """WindowCenter/Width may be multi-valued: the first pair is the default."""
    if isinstance(value, str | int | float):
        return float(value)
    return float(next(iter(value)))  # type: ignore[call-overload]


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            return float(value[0]), float(value[1])
    return None


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _decode(ds: Dataset) -> np.ndarray:
    if "PixelData" not in ds:
        raise PixelDataUnsupported("the instance has no pixel data (not an image)")
    try:
        # Convert YBR to RGB so colour images can become luminance below.
        return np.asarray(ds.pixel_array)
    except (NotImplementedError, RuntimeError) as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        name = getattr(syntax, "name", str(syntax))
        raise PixelDataUnsupported(
            f"cannot decode pixel data in transfer syntax {name}: {exc}"
        ) from exc
    except (ValueError, AttributeError, KeyError) as exc:
        raise PixelDataUnsupported(f"malformed pixel data: {exc}") from exc


def _default_window(pixels: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(pixels, DEFAULT_WINDOW_PERCENTILES)
    return float((low + high) / 2.0), float(max(high - low, 1.0))


def _voi_lut_max(ds: Dataset) -> int | None:
    """The output maximum of the first VOI LUT (None when there is no usable one)."""
    seq = ds.get("VOILUTSequence")
    if not seq:
        return None
    try:
        descriptor = seq[0].LUTDescriptor
        bits = int(descriptor[2])
        len(seq[0].LUTData)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None
    return (1 << bits) - 1 if 8 <= bits <= 16 else None


def frames_from_dataset(ds: Dataset) -> list[DecodedFrame]:
    """Every frame of one instance, decoded to physical values (see module docstring)."""
    samples = int(ds.get("SamplesPerPixel", 1))
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if samples not in (1, 3):
        raise PixelDataUnsupported(f"{samples} samples per pixel is not an image we can read")
    if photometric == "PALETTE COLOR":
        raise PixelDataUnsupported("palette colour images are not supported")

    raw = _decode(ds)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if samples == 3:
        stack = _luminance(raw.reshape((n_frames, *raw.shape[-3:])).astype(np.float32))
    else:
        stack = raw.reshape((n_frames, *raw.shape[-2:]))
    if stack.ndim != 3 or min(stack.shape[1:]) < 8:
        raise PixelDataUnsupported(f"image too small or misshapen: {tuple(stack.shape)}")

    physical = apply_rescale(stack, ds).astype(np.float32) if samples == 1 else stack
    window: tuple[float, float] | None = None
    if "WindowCenter" in ds and "WindowWidth" in ds:
        window = (_first(ds.WindowCenter), max(_first(ds.WindowWidth), 1.0))

    voi_lut_max = _voi_lut_max(ds) if window is None and samples == 1 else None
    if voi_lut_max is not None:
        physical = np.asarray(apply_voi_lut(physical, ds, prefer_lut=True), np.float32)
        window = ((voi_lut_max + 1) / 2.0, float(voi_lut_max + 1))

    if photometric == "MONOCHROME1":
        # Display inverts: move to the MONOCHROME2 sense so the model sees one convention.
        # The stored range's maximum, pushed through the modality LUT, is the mirror point
        # (the LUT's output maximum once a VOI LUT has been applied).
        bits = int(ds.get("BitsStored", 16))
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        stored_max = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        mirror = stored_max * slope + intercept
        if voi_lut_max is not None:
            mirror, slope = float(voi_lut_max), 1.0
        physical = (mirror - physical).astype(np.float32)
        if window is not None:
            window = (mirror + slope - window[0], window[1])

    uid = str(ds.get("SOPInstanceUID", ""))
    sop_class = str(ds.get("SOPClassUID", ""))
    spacing = _spacing(ds)
    frames = []
    for index in range(n_frames):
        pixels = np.ascontiguousarray(physical[index], dtype=np.float32)
        frame_window = window if window is not None else _default_window(pixels)
        frames.append(DecodedFrame(pixels, frame_window, uid, sop_class, index + 1, spacing))
    return frames


def read_frames(path: Path | str) -> list[DecodedFrame]:
    """Read an instance file and decode its frames; unreadable files are 'unsupported' too."""
    try:
        ds = dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise PixelDataUnsupported(f"unreadable DICOM file: {exc}") from exc
    return frames_from_dataset(ds)
