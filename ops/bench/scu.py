"""C-STORE cost of the delivery worker's SCU: a fresh association per object vs a warm one.

Sends the same small SR-class object N times to DCMTK `storescp --fork` (ingest bench's
receiver) with `store_dataset`, once opening an association per store and once keeping one warm
(`keep_warm=True`, what the delivery worker does). Both in the same run, so the ratio holds on a
busy machine. Last line JSON: {"n", "fresh_ms_p50", "warm_ms_p50", "speedup"}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import Comprehensive3DSRStorage, ExplicitVRLittleEndian, generate_uid

from ops.bench.ingest import storescp_receiver
from shared.dicom.association_pool import POOL
from shared.dicom.scu import store_dataset


def _sr_object() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = Comprehensive3DSRStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "SR", "BENCH"
    return ds


def _store_ms(n: int, ae: str, port: int, *, keep_warm: bool) -> list[float]:
    times = []
    for _ in range(n):
        ds = _sr_object()  # a new instance each time, as deliveries are
        start = time.perf_counter()
        store_dataset(ds, ae, "127.0.0.1", port, keep_warm=keep_warm)
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="stores per mode")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, storescp_receiver(Path(tmp)) as peer:
        fresh = _store_ms(args.n, peer.ae_title, peer.port, keep_warm=False)
        warm = _store_ms(args.n, peer.ae_title, peer.port, keep_warm=True)
        POOL.close_idle(older_than_s=0)
    fresh_p50, warm_p50 = statistics.median(fresh), statistics.median(warm)
    print(
        json.dumps(
            {
                "n": args.n,
                "fresh_ms_p50": round(fresh_p50, 2),
                "warm_ms_p50": round(warm_p50, 2),
                "speedup": round(fresh_p50 / warm_p50, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
