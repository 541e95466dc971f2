"""From a stored DICOM instance to physical pixel values the model (and the UI renderer) can use.

The grayscale pipeline of PS3.3 C.11, with pydicom's functions where they fit:
- modality LUT: `apply_modality_lut` (rescale slope/intercept: HU for CT, or a Modality LUT);
- VOI: the header window with its VOI LUT Function (LINEAR, LINEAR_EXACT, SIGMOID) is kept
  beside the values and applied at display time by `display_values` (pydicom's windowing);
  an image whose VOI is a LUT (VOI LUT Sequence, the tone curve a for-presentation X-ray may
  carry) and no window has that LUT applied with `apply_voi_lut`: its values are its output;
  without either a window is derived from the image's percentiles;
- presentation: MONOCHROME1, or Presentation LUT Shape INVERSE, is turned into the MONOCHROME2
  sense (higher = brighter) by mirroring over the stored range. (pydicom's
  `apply_presentation_lut` mirrors over the image's own maximum, which would move the window.)
Multi-frame images split into frames; `read_frame` decodes only the frame asked for. Compressed
transfer syntaxes decode through pydicom's pixel handlers (pylibjpeg, openjpeg, RLE). Anything that cannot become a grey-level image raises
`PixelDataUnsupported` with a reason a radiologist or PACS admin can read; the worker records it
as the study's 'not applicable' reason instead of crashing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.pixels.processing import apply_windowing
from pydicom.valuerep import DSfloat

# Percentiles that make a default window when the instance carries none.
DEFAULT_WINDOW_PERCENTILES = (1.0, 99.0)
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
DISPLAY_BITS = 16  # display_values works at this depth, then scales to [0, 1]


class PixelDataUnsupported(ValueError):
    """The instance's pixel data can't be turned into a grey-level image; `str()` says why."""


class FrameOutOfRange(PixelDataUnsupported):
    """The instance has no such frame."""


@dataclass(frozen=True)
class DecodedFrame:
    pixels: np.ndarray  # float32 (rows, cols), physical units, higher = brighter
    window: tuple[float, float]  # (center, width) in the same units
    sop_instance_uid: str
    sop_class_uid: str
    frame: int  # 1-based
    pixel_spacing_mm: tuple[float, float] | None  # (row, column)
    # How `window` maps values to greys (VOI LUT Function); the model's own windows ignore it.
    voi_function: str = "LINEAR"


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


def _decode(ds: Dataset, path: Path | None = None, index: int | None = None) -> np.ndarray:
    """All frames, or only frame `index` (0-based) read from `path`."""
    if "PixelData" not in ds:
        raise PixelDataUnsupported("the instance has no pixel data (not an image)")
    try:
        if path is not None and index is not None:
            # Reads and decodes that frame's bytes only (native or encapsulated).
            return np.asarray(pixel_array(path, index=index))
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


def _check_image(ds: Dataset) -> tuple[int, str]:
    samples = int(ds.get("SamplesPerPixel", 1))
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if samples not in (1, 3):
        raise PixelDataUnsupported(f"{samples} samples per pixel is not an image we can read")
    if photometric == "PALETTE COLOR":
        raise PixelDataUnsupported("palette colour images are not supported")
    return samples, photometric


def _voi_function(ds: Dataset) -> str:
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    return function if function in VOI_FUNCTIONS else "LINEAR"


def _shown_inverted(ds: Dataset, photometric: str) -> bool:
    """MONOCHROME1 (minimum = white) or a Presentation LUT Shape INVERSE: one inversion (a DX in
    MONOCHROME1 declares INVERSE for the same inversion, PS3.3 C.8.11.6.1.1)."""
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    return photometric == "MONOCHROME1" or shape == "INVERSE"


def _physical(
    ds: Dataset, stack: np.ndarray, samples: int, photometric: str
) -> tuple[np.ndarray, tuple[float, float] | None, str]:
    """(frames, rows, cols) stored values → physical values, the header window and its function."""
    physical = apply_modality_lut(stack, ds).astype(np.float32) if samples == 1 else stack
    window: tuple[float, float] | None = None
    function = "LINEAR"
    if "WindowCenter" in ds and "WindowWidth" in ds:
        window = (_first(ds.WindowCenter), max(_first(ds.WindowWidth), 1.0))
        function = _voi_function(ds)

    voi_lut_max = _voi_lut_max(ds) if window is None and samples == 1 else None
    if voi_lut_max is not None:
        # The LUT's input is the modality LUT's output: integers unless the rescale is
        # fractional; pydicom indexes its LUT with integers (and warns on a float array).
        lut_input = physical.astype(np.int64) if np.all(np.mod(physical, 1) == 0) else physical
        physical = np.asarray(apply_voi_lut(lut_input, ds, prefer_lut=True), np.float32)
        window = ((voi_lut_max + 1) / 2.0, float(voi_lut_max + 1))

    if samples == 1 and _shown_inverted(ds, photometric):
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
    return physical, window, function


def _stack(ds: Dataset, raw: np.ndarray, samples: int, n_frames: int) -> np.ndarray:
    if samples == 3:
        stack = _luminance(raw.reshape((n_frames, *raw.shape[-3:])).astype(np.float32))
    else:
        stack = raw.reshape((n_frames, *raw.shape[-2:]))
    if stack.ndim != 3 or min(stack.shape[1:]) < 8:
        raise PixelDataUnsupported(f"image too small or misshapen: {tuple(stack.shape)}")
    return stack


def _frames(
    ds: Dataset, raw: np.ndarray, samples: int, photometric: str, numbers: list[int]
) -> list[DecodedFrame]:
    stack = _stack(ds, raw, samples, len(numbers))
    physical, window, function = _physical(ds, stack, samples, photometric)
    uid = str(ds.get("SOPInstanceUID", ""))
    sop_class = str(ds.get("SOPClassUID", ""))
    spacing = _spacing(ds)
    frames = []
    for index, number in enumerate(numbers):
        pixels = np.ascontiguousarray(physical[index], dtype=np.float32)
        frame_window = window if window is not None else _default_window(pixels)
        frames.append(DecodedFrame(pixels, frame_window, uid, sop_class, number, spacing, function))
    return frames


def frames_from_dataset(ds: Dataset) -> list[DecodedFrame]:
    """Every frame of one instance, decoded to physical values (see module docstring)."""
    samples, photometric = _check_image(ds)
    raw = _decode(ds)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    return _frames(ds, raw, samples, photometric, list(range(1, n_frames + 1)))


def read_frame(path: Path | str, frame: int) -> DecodedFrame:
    """One frame (1-based) of an instance file; only that frame is decoded."""
    try:
        ds = dcmread(path, stop_before_pixels=False, defer_size="1 KB")
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise PixelDataUnsupported(f"unreadable DICOM file: {exc}") from exc
    samples, photometric = _check_image(ds)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame <= n_frames:
        raise FrameOutOfRange(f"frame {frame} out of range 1..{n_frames}")
    raw = _decode(ds, Path(path), frame - 1) if n_frames > 1 else _decode(ds)
    (decoded,) = _frames(ds, raw, samples, photometric, [frame])
    return decoded


def display_values(
    pixels: np.ndarray, center: float, width: float, function: str = "LINEAR"
) -> np.ndarray:
    """Values → greys in [0, 1] through a VOI window and its function (PS3.3 C.11.2.1.2),
    computed by pydicom's windowing."""
    if function not in VOI_FUNCTIONS:
        raise ValueError(f"unknown VOI LUT Function {function!r}")
    voi = Dataset()
    voi.PhotometricInterpretation = "MONOCHROME2"  # the values are in that sense already
    voi.BitsStored, voi.PixelRepresentation = DISPLAY_BITS, 0
    voi.WindowCenter = DSfloat(center, auto_format=True)
    voi.WindowWidth = DSfloat(max(width, 1.0), auto_format=True)
    voi.VOILUTFunction = function
    greys = apply_windowing(pixels, voi)
    return (greys / float((1 << DISPLAY_BITS) - 1)).astype(np.float32)


def read_frames(path: Path | str) -> list[DecodedFrame]:
    """Read an instance file and decode its frames; unreadable files are 'unsupported' too."""
    try:
        ds = dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise PixelDataUnsupported(f"unreadable DICOM file: {exc}") from exc
    return frames_from_dataset(ds)
