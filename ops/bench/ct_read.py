"""Memory and time of drafting one long CT series: the streamed read against the whole-study read.

    .venv/bin/python -m ops.bench.ct_read [--slices 1000] [--size 512]

Writes a series of `--slices` CT slices (`--size`² pixels, 16 bit), then drafts it with the
bundled ONNX model in two fresh processes: once as the worker drafts a study alone (read in
chunks of STREAM_CHUNK instances, only model inputs kept), once with every image decoded and
preprocessed first (`OnnxBackend._read`, the path batched X-rays take). Each process reports its
peak resident memory (ru_maxrss) and the draft's wall time. Last line JSON:
{"slices", "streamed_peak_mb", "whole_peak_mb", "peak_ratio", "streamed_s", "whole_s",
"base_mb"} (base_mb: the process after loading the model, before the draft).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydicom.uid import generate_uid

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_series(directory: Path, slices: int, size: int) -> None:
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    for index in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = (
            CTImageStorage,
            sop,
        )
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "CT"
        ds.InstanceNumber = index + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, -1.0 * index]
        ds.PixelSpacing = [0.7, 0.7]
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = rng.integers(900, 1200, (size, size), dtype=np.uint16).tobytes()
        ds.save_as(directory / f"{index:05d}.dcm", enforce_file_format=True)


def measure(directory: Path, mode: str) -> dict[str, float]:
    """In this process: draft the series in `mode` ('streamed' or 'whole')."""
    from shared.config import get_settings
    from shared.inference.onnx_backend import OnnxBackend
    from tests.support.study_rows import study_input

    study = study_input(sorted(directory.glob("*.dcm")))
    backend = OnnxBackend(get_settings().model_path)
    model = backend.model
    base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    if mode == "streamed":
        (result,) = backend.draft_iter([study])
    else:
        read = backend._read(model, study, backend._pool().map)
        assert not isinstance(read, Exception), read
        timings: dict[str, float] = {}
        backend._infer(model, read, timings, None)
        result = read
    seconds = time.perf_counter() - started
    assert not isinstance(result, Exception), result
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_mb": round(peak_mb, 1), "seconds": round(seconds, 2), "base_mb": round(base_mb)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--slices", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--measure", choices=["streamed", "whole"], help=argparse.SUPPRESS)
    parser.add_argument("--directory", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # the child process
        print(json.dumps(measure(args.directory, args.measure)))
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="medrega-ct-read-"))
    try:
        write_series(workdir, args.slices, args.size)
        results = {}
        for mode in ("streamed", "whole"):
            output = subprocess.run(
                [sys.executable, "-m", "ops.bench.ct_read", "--measure", mode,
                 "--directory", str(workdir)],
                cwd=REPO_ROOT, capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            results[mode] = json.loads(output.strip().splitlines()[-1])
            print(f"{mode}: {results[mode]}", flush=True)
        streamed, whole = results["streamed"], results["whole"]
        print(
            json.dumps(
                {
                    "slices": args.slices,
                    "streamed_peak_mb": streamed["peak_mb"],
                    "whole_peak_mb": whole["peak_mb"],
                    "peak_ratio": round(streamed["peak_mb"] / whole["peak_mb"], 3),
                    "streamed_s": streamed["seconds"],
                    "whole_s": whole["seconds"],
                    "base_mb": streamed["base_mb"],
                }
            )
        )
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
