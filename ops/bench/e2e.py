"""End-to-end turnaround: last C-STORE accepted → ORU ACK at the RIS, and drafting throughput.

Sends 20 chest X-rays and 5 CT series (≥ 100 slices) from several storescu senders at once to
a real listener (scratch PostgreSQL database), with one worker (queue gpu, one thread: one
model process, as on one GPU) plus a delivery worker (queue io) and the outbox relay, a real Orthanc as the PACS receiving the
SRs and the RIS sink receiving the ORUs. Per study:

    stability_s  = draft job created − last instance received   (the STABLE_AGE wait, excluded)
    latency_s    = ORU delivered − draft job created             (queue + read + model + SR + ORU)

Last line JSON: {"cxr_p50_s", "cxr_p95_s", "ct_p50_s", "ct_p95_s", "studies_per_hour",
"delivered", "sent", "stability_s"}. `studies_per_hour` is the chest X-ray throughput of the one
model process: X-ray studies delivered per hour of wall clock from the first X-ray job to the
last X-ray ORU.

    python -m ops.bench.e2e [--cxr 20] [--ct 5] [--ct-slices 120] [--senders 4] [--io-threads 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from model.phantoms.__main__ import write_phantom_study
from model.phantoms.dicom_writer import WrittenStudy
from model.phantoms.splits import seeds
from ops.bench import harness
from ops.ris_sink import RisSink
from services.pacs.local_orthanc import running_orthanc
from shared.config import Settings
from shared.db.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    DraftJob,
    Instance,
    Report,
    Study,
)
from tests.support.listener_process import listener_process
from tests.support.worker_process import delete_test_queues, start_relay, start_worker

DB_NAME = f"medrega_bench_e2e_{os.getpid()}"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def send(study: WrittenStudy, port: int, ae_title: str) -> None:
    harness.storescu(study.files, port, ae_title)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cxr", type=int, default=20)
    parser.add_argument("--ct", type=int, default=5)
    parser.add_argument("--ct-slices", type=int, default=120)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--io-threads", type=int, default=3, help="delivery worker threads")
    parser.add_argument("--stable-age", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)

    url = harness.scratch_database(DB_NAME)
    os.environ["MEDREGA_DATABASE_URL"] = url
    prefix = f"bench{os.getpid()}-"
    work = Path(tempfile.mkdtemp(prefix="medrega-bench-e2e-"))
    print(f"writing {args.cxr} chest X-rays and {args.ct} CTs of {args.ct_slices} slices …",
          file=sys.stderr, flush=True)  # fmt: skip
    studies = [write_phantom_study("cxr", s, work / "in") for s in seeds("test", args.cxr)]
    studies += [
        write_phantom_study("chest_ct", s, work / "in", n_slices=args.ct_slices)
        for s in seeds("test", args.ct, start=args.cxr)
    ]
    workers = []
    try:
        with (
            listener_process(
                storage_dir=work / "storage", database_url=url, stable_age_s=args.stable_age,
                log_path=work / "listener.log",
            ) as listener,
            running_orthanc(work / "orthanc", Settings(), listener_port=listener.port) as orthanc,
            RisSink(work / "ris") as sink,
        ):  # fmt: skip
            env = {
                "MEDREGA_DATABASE_URL": url,
                "MEDREGA_QUEUE_PREFIX": prefix,
                "MEDREGA_STORAGE_DIR": str(work / "storage"),
                "MEDREGA_PACS_PORT": str(orthanc.dicom_port),
                "MEDREGA_RIS_PORT": str(sink.port),
            }
            workers.append(
                start_worker(env, work / "worker-gpu.log", queues=("gpu",), concurrency=1)
            )
            workers.append(
                start_worker(
                    env, work / "worker-io.log", queues=("io",), concurrency=args.io_threads
                )
            )
            workers.append(start_relay(env, work / "relay.log"))
            started = time.monotonic()
            with ThreadPoolExecutor(args.senders) as pool:
                list(pool.map(lambda s: send(s, listener.port, listener.ae_title), studies))
            print(f"sent {len(studies)} studies in {time.monotonic() - started:.1f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
            engine = create_engine(url)
            factory = sessionmaker(engine)
            deadline = time.monotonic() + args.timeout
            delivered = 0
            while time.monotonic() < deadline:
                with factory() as session:
                    delivered = (
                        session.query(Delivery)
                        .filter(
                            Delivery.kind == DeliveryKind.HL7,
                            Delivery.state == DeliveryState.DELIVERED,
                        )
                        .count()
                    )
                if delivered >= len(studies):
                    break
                time.sleep(1.0)
            rows = []
            with factory() as session:
                for study in studies:
                    db_study = session.scalar(
                        select(Study).where(Study.study_instance_uid == study.study_instance_uid)
                    )
                    if db_study is None:
                        continue
                    last_received: datetime | None = max(
                        session.scalars(select(Instance.received_at).where(
                            Instance.study_id == db_study.id)), default=None,
                    )  # fmt: skip
                    job = session.scalar(select(DraftJob).where(DraftJob.study_id == db_study.id))
                    hl7 = session.scalar(
                        select(Delivery).join(Report).where(
                            Report.study_id == db_study.id, Delivery.kind == DeliveryKind.HL7,
                            Delivery.state == DeliveryState.DELIVERED,
                        )
                    )  # fmt: skip
                    if job is None or hl7 is None or last_received is None:
                        continue
                    assert hl7.delivered_at is not None
                    assert job.started_at is not None and job.finished_at is not None
                    rows.append((
                        study.domain,
                        (job.created_at - last_received).total_seconds(),
                        (hl7.delivered_at - job.created_at).total_seconds(),
                        job.created_at, hl7.delivered_at,
                        (job.started_at - job.created_at).total_seconds(),
                        (job.finished_at - job.started_at).total_seconds(),
                        (hl7.delivered_at - job.finished_at).total_seconds(),
                    ))  # fmt: skip
            engine.dispose()
    finally:
        for worker in workers:
            worker.stop()
        delete_test_queues(prefix)
        harness.drop_database(DB_NAME)
    cxr = [r for r in rows if r[0] == "cxr"]
    ct = [r for r in rows if r[0] != "cxr"]
    span = (max(r[4] for r in cxr) - min(r[3] for r in cxr)).total_seconds() if cxr else 0.0
    result = {
        "cxr_p50_s": round(percentile([r[2] for r in cxr], 50), 2),
        "cxr_p95_s": round(percentile([r[2] for r in cxr], 95), 2),
        "ct_p50_s": round(percentile([r[2] for r in ct], 50), 2),
        "ct_p95_s": round(percentile([r[2] for r in ct], 95), 2),
        "studies_per_hour": round(len(cxr) / span * 3600, 0) if span > 0 else 0.0,
        "delivered": len(rows),
        "sent": len(studies),
        "stability_s": round(statistics.median([r[1] for r in rows]), 2) if rows else None,
    }
    for name, group in (("cxr", cxr), ("ct", ct)):
        if group:
            print(
                f"{name}: median queue {statistics.median(r[5] for r in group):.2f} s, "
                f"draft {statistics.median(r[6] for r in group):.2f} s, "
                f"deliver {statistics.median(r[7] for r in group):.2f} s",
                file=sys.stderr,
            )
    print(json.dumps(result))
    return 0 if len(rows) == len(studies) else 1


if __name__ == "__main__":
    sys.exit(main())
