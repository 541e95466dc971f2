"""End-to-end turnaround: last C-STORE accepted → ORU ACK at the RIS, drafting throughput, and
Locate/Identify through the web API on the idle stack and during the burst.

Sends 20 chest X-rays and 5 CT series (≥ 100 slices) from several storescu senders at once to
a real listener (scratch PostgreSQL database), with the model workers as `ops/stack.sh` runs
them (queue draft: one thread, as on one GPU; queue interactive: its own process), a delivery
worker (queue io), the outbox relay, the web app, a real Orthanc as the PACS receiving the SRs
and the RIS sink receiving the ORUs. Per study:

    stability_s  = draft job created − last instance received   (the STABLE_AGE wait, excluded)
    latency_s    = ORU delivered − draft job created             (queue + read + model + SR + ORU)

Before the burst, on the idle stack: one chest X-ray to warm up, then `--alone` (3) chest X-rays
sent one at a time, each waited for (`cxr_alone_s`: their median latency), then Locate and
Identify through the web API, one after another (`interactive_alone_ms`: median). During the
burst a radiologist keeps asking Locate and Identify, one a second (`--click-every`;
`interactive_p95_ms`).

Last line JSON: {"cxr_p50_s", "cxr_p95_s", "ct_p50_s", "ct_p95_s", "studies_per_hour",
"delivered", "sent", "stability_s", "cxr_alone_s", "interactive_alone_ms", "interactive_p95_ms",
"interactive_n", "interactive_failed"}. `studies_per_hour` is the chest X-ray throughput of the
one model process: X-ray studies delivered per hour of wall clock from the first X-ray job to
the last X-ray ORU. Goals: cxr_p95_s ≤ 1.5 × cxr_alone_s, ct_p95_s ≤ 15 s, interactive_p95_ms ≤
1.5 × interactive_alone_ms, delivered == sent.

    python -m ops.bench.e2e [--cxr 20] [--ct 5] [--ct-slices 120] [--senders 4] [--io-threads 3]
        [--alone 3] [--interactive 20] [--click-every 1.0] [--profile-dir DIR] [--timeline FILE]
        [--draft-nice N] [--cxr-after-ct]

On stderr: per study class the median queue/draft/deliver split, and per delivery kind (SR,
GSPS, KOS, ORU) the median wait from recorded to claimed and from claim to acknowledged. With
`--profile-dir` the draft worker, the delivery worker and the relay run under py-spy (wall clock,
idle threads kept); a summary of where `run_draft_job`, `attempt_delivery` and `relay_once` spend
their time is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pydicom
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, sessionmaker

from model.phantoms.__main__ import write_phantom_study
from model.phantoms.dicom_writer import WrittenStudy
from model.phantoms.splits import seeds
from ops.bench import harness
from ops.bench.ingest import profiled
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
from tests.support.web_process import RunningWeb, start_web
from tests.support.worker_process import (
    RunningWorker,
    delete_test_queues,
    start_relay,
    start_worker,
)

DB_NAME = f"medrega_bench_e2e_{os.getpid()}"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def send(study: WrittenStudy, port: int, ae_title: str) -> None:
    harness.storescu(study.files, port, ae_title)


class Radiologist:
    """A radiologist on the JSON API (login form with CSRF, then X-CSRF-Token), timing clicks."""

    USERNAME = "bench.reader"
    PASSWORD = "bench-reader-password-1"

    def __init__(self, base_url: str, env: dict[str, str]) -> None:
        harness.create_radiologist(
            env, self.USERNAME, self.PASSWORD, "Bench Reader", "Reader^Bench"
        )
        self.client = httpx.Client(base_url=base_url, timeout=60)
        harness.sign_in_to_api(self.client, self.USERNAME, self.PASSWORD)

    def click(self, study_id: int, sop_instance_uid: str, which: int) -> float | None:
        """Locate (even) or Identify (odd); milliseconds until the answer, None if it failed."""
        body: dict[str, object]
        if which % 2 == 0:
            path, body = "locate", {"sop_instance_uid": sop_instance_uid, "query": "right lung"}
        else:
            box = {"x1": 100.0, "y1": 100.0, "x2": 300.0, "y2": 400.0}
            path, body = "identify", {"sop_instance_uid": sop_instance_uid, "box": box}
        started = time.perf_counter()
        response = self.client.post(f"/api/v1/studies/{study_id}/{path}", json=body)
        elapsed_ms = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            print(f"{path}: {response.status_code} {response.text[:200]}", file=sys.stderr)
            return None
        return elapsed_ms


@dataclass(frozen=True)
class StudyTimes:
    domain: str
    stability_s: float
    latency_s: float
    created: datetime
    delivered: datetime
    queue_s: float
    draft_s: float
    deliver_s: float
    # The ORU's delivery, split: relay + broker hop until a worker claimed it, then build + send.
    oru_claim_s: float
    oru_send_s: float


def study_times(session: Session, study: WrittenStudy) -> StudyTimes | None:
    db_study = session.scalar(
        select(Study).where(Study.study_instance_uid == study.study_instance_uid)
    )
    if db_study is None:
        return None
    last_received: datetime | None = max(
        session.scalars(select(Instance.received_at).where(Instance.study_id == db_study.id)),
        default=None,
    )
    job = session.scalar(select(DraftJob).where(DraftJob.study_id == db_study.id))
    hl7 = session.scalar(
        select(Delivery).join(Report).where(
            Report.study_id == db_study.id, Delivery.kind == DeliveryKind.HL7,
            Delivery.state == DeliveryState.DELIVERED,
        )
    )  # fmt: skip
    if job is None or hl7 is None or last_received is None:
        return None
    assert hl7.delivered_at is not None and hl7.last_attempt_at is not None
    assert job.started_at is not None and job.finished_at is not None
    return StudyTimes(
        study.domain,
        (job.created_at - last_received).total_seconds(),
        (hl7.delivered_at - job.created_at).total_seconds(),
        job.created_at,
        hl7.delivered_at,
        (job.started_at - job.created_at).total_seconds(),
        (job.finished_at - job.started_at).total_seconds(),
        (hl7.delivered_at - job.finished_at).total_seconds(),
        (hl7.last_attempt_at - hl7.created_at).total_seconds(),
        (hl7.delivered_at - hl7.last_attempt_at).total_seconds(),
    )


def wait_delivered(
    factory: sessionmaker[Session], studies: list[WrittenStudy], timeout_s: float
) -> list[StudyTimes]:
    """Poll until every study's ORU is acknowledged (or the timeout); their times."""
    deadline = time.monotonic() + timeout_s
    while True:
        with factory() as session:
            times = [t for t in (study_times(session, s) for s in studies) if t is not None]
        if len(times) == len(studies) or time.monotonic() > deadline:
            return times
        time.sleep(0.2)


def wait_ct_drafting(factory: sessionmaker[Session], timeout_s: float) -> None:
    """Until the model has started drafting some study that is not an X-ray."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with factory() as session:
            if session.scalar(
                select(DraftJob.id).where(
                    DraftJob.started_at.is_not(None), DraftJob.instance_count > 10
                )
            ):
                return
        time.sleep(0.1)
    raise RuntimeError("no CT draft started")


def delivery_breakdown(
    factory: sessionmaker[Session], studies: list[WrittenStudy]
) -> dict[str, tuple[int, float, float]]:
    """Per delivery kind: (count, median s from recorded to claimed, median s claim → ACK)."""
    uids = [s.study_instance_uid for s in studies]
    with factory() as session:
        rows = session.execute(
            select(Delivery.kind, Delivery.created_at, Delivery.last_attempt_at,
                   Delivery.delivered_at)
            .join(Study, Study.id == Delivery.study_id)
            .where(Study.study_instance_uid.in_(uids), Delivery.state == DeliveryState.DELIVERED)
        ).all()  # fmt: skip
    by_kind: dict[str, list[tuple[float, float]]] = {}
    for kind, created, attempted, delivered in rows:
        if attempted is None or delivered is None:
            continue  # a delivered row has both; the columns are nullable
        by_kind.setdefault(str(kind), []).append(
            ((attempted - created).total_seconds(), (delivered - attempted).total_seconds())
        )
    return {
        kind: (
            len(times),
            statistics.median(t[0] for t in times),
            statistics.median(t[1] for t in times),
        )
        for kind, times in sorted(by_kind.items())
    }


@dataclass(frozen=True)
class JobSpan:
    """One draft job's timestamps from the database (seconds from the first job's creation)."""

    job_id: int
    domain: str
    created: float
    published: float | None
    started: float
    finished: float
    oru_claimed: float | None
    oru_acked: float | None
    timings: dict[str, float]


def job_timeline(factory: sessionmaker[Session], studies: list[WrittenStudy]) -> list[JobSpan]:
    """Every burst study's draft job and ORU, as the database recorded them, in creation order."""
    domain_of = {s.study_instance_uid: s.domain for s in studies}
    with factory() as session:
        rows = session.execute(
            select(Study.study_instance_uid, DraftJob.id, DraftJob.created_at, DraftJob.published_at,
                   DraftJob.started_at, DraftJob.finished_at, DraftJob.timings,
                   Delivery.last_attempt_at, Delivery.delivered_at)
            .join(DraftJob, DraftJob.study_id == Study.id)
            .join(Report, Report.study_id == Study.id, isouter=True)
            .join(Delivery, (Delivery.report_id == Report.id)
                  & (Delivery.kind == DeliveryKind.HL7), isouter=True)
            .where(Study.study_instance_uid.in_(domain_of))
            .order_by(DraftJob.created_at)
        ).all()  # fmt: skip
    if not rows:
        return []
    origin = min(r.created_at for r in rows)

    def at(moment: datetime | None) -> float | None:
        return None if moment is None else (moment - origin).total_seconds()

    return [
        JobSpan(
            r.id,
            domain_of[r.study_instance_uid],
            at(r.created_at) or 0.0,
            at(r.published_at),
            at(r.started_at) or 0.0,
            at(r.finished_at) or 0.0,
            at(r.last_attempt_at),
            at(r.delivered_at),
            dict(r.timings or {}),
        )  # fmt: skip
        for r in rows
        if r.started_at is not None and r.finished_at is not None
    ]


def covered(window: tuple[float, float], intervals: list[tuple[float, float]]) -> float:
    """Seconds of `window` inside the union of `intervals` (batched drafts overlap)."""
    clipped = sorted(
        (max(a, window[0]), min(b, window[1]))
        for a, b in intervals
        if b > window[0] and a < window[1]
    )
    total, end = 0.0, window[0]
    for a, b in clipped:
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def where_xray_waits(spans: list[JobSpan]) -> list[str]:
    """Per chest X-ray of the burst: its wait for the model (created → started) split by what the
    model was doing meanwhile — a CT draft open (X-rays drafted inside its pauses included),
    otherwise drafting other X-rays, or nothing (relay and broker hops, the worker between
    tasks) — then its draft and delivery; medians and p95. A batched X-ray's `started` is its
    claim at the start of the batch: its draft_s includes the studies before it in the batch."""
    parts: dict[str, list[float]] = {}
    for span in spans:
        if span.domain != "cxr":
            continue
        wait = (span.created, span.started)
        ct = covered(wait, [(o.started, o.finished) for o in spans if o.domain != "cxr"])
        busy = covered(wait, [(o.started, o.finished) for o in spans if o is not span])
        xr = busy - ct
        values = {
            "wait_s": span.started - span.created,
            "behind_ct_s": ct,
            "behind_xray_s": xr,
            "model_idle_s": max(0.0, span.started - span.created - busy),
            "draft_s": span.finished - span.started,
            "claim_ms": span.timings.get("claim_ms", float("nan")),
            "read_ms": span.timings.get("read_ms", float("nan")),
            "model_ms": span.timings.get("preprocess_ms", 0.0)
            + span.timings.get("inference_ms", 0.0),
            "store_ms": span.timings.get("store_ms", float("nan")),
            "deliver_s": (span.oru_acked - span.finished)
            if span.oru_acked is not None
            else float("nan"),
        }
        for key, value in values.items():
            parts.setdefault(key, []).append(value)
    return [
        f"cxr burst {key}: median {statistics.median(v):.2f}, p95 {percentile(v, 95):.2f}"
        for key, v in parts.items()
    ]


OWN_CODE = ("services/", "shared/", "ops/")


def where_time_goes(collapsed: Path, entry: str, top: int = 12) -> list[str]:
    """Wall-clock samples under `entry` (a function name), by the innermost frame of our own code
    and by the innermost frame overall: where that function's time goes."""
    own: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = stack.split(";")
        if not count_text.isdigit() or not any(f.startswith(entry + " ") for f in frames):
            continue
        count = int(count_text)
        total += count
        leaf[frames[-1]] += count
        own[next((f for f in reversed(frames) if any(k in f for k in OWN_CODE)), "?")] += count
    lines = [f"{entry}: {total} samples (250/s per thread)"]
    lines += [f"  {100 * c / max(total, 1):5.1f}%  own {name}" for name, c in own.most_common(top)]
    lines += [
        f"  {100 * c / max(total, 1):5.1f}%  leaf {name}" for name, c in leaf.most_common(top)
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cxr", type=int, default=20)
    parser.add_argument("--ct", type=int, default=5)
    parser.add_argument("--ct-slices", type=int, default=120)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--io-threads", type=int, default=3, help="delivery worker threads")
    parser.add_argument("--alone", type=int, default=3, help="X-rays sent alone before the burst")
    parser.add_argument("--interactive", type=int, default=20, help="clicks on the idle stack")
    parser.add_argument(
        "--click-every", type=float, default=1.0, help="seconds between clicks during the burst"
    )
    parser.add_argument("--stable-age", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument(
        "--profile-dir", type=Path, help="py-spy the delivery worker and the relay (wall clock)"
    )
    parser.add_argument(
        "--draft-nice", type=int, default=0, help="MEDREGA_WORKER_NICE of the draft worker"
    )
    parser.add_argument(
        "--cxr-after-ct",
        action="store_true",
        help="send the CTs first and the X-rays once a CT draft has started (X-rays behind a CT)",
    )
    parser.add_argument(
        "--timeline", type=Path, help="write each burst job's timestamps here (JSON lines)"
    )
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
    alone = [
        write_phantom_study("cxr", s, work / "in")
        for s in seeds("test", args.alone + 1, start=args.cxr + args.ct)
    ]
    workers: list[RunningWorker] = []
    web: RunningWeb | None = None
    clicks_alone: list[float] = []
    clicks_burst: list[float | None] = []
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
                start_worker(
                    {**env, "MEDREGA_WORKER_NICE": str(args.draft_nice)},
                    work / "worker-draft.log",
                    queues=("draft",),
                    concurrency=1,
                )
            )
            workers.append(
                start_worker(
                    env, work / "worker-interactive.log", queues=("interactive",), concurrency=1
                )
            )
            workers.append(
                start_worker(
                    env, work / "worker-io.log", queues=("delivery",), concurrency=args.io_threads
                )
            )
            workers.append(start_relay(env, work / "relay.log"))
            profiling = ExitStack()
            if args.profile_dir is not None:
                profiled_processes = (
                    ("draft", workers[0]), ("delivery", workers[2]), ("relay", workers[3])
                )  # fmt: skip
                for name, process in profiled_processes:
                    profiling.enter_context(
                        profiled(
                            process.process.pid, args.profile_dir / f"{name}.collapsed", idle=True
                        )
                    )
            web = start_web(env, work / "web.log")
            reader = Radiologist(web.base_url, env)
            engine = create_engine(url)
            factory = sessionmaker(engine)

            # The idle stack: one X-ray to warm up (model load, first connections), then alone.
            alone_times: list[StudyTimes] = []
            for i, study in enumerate(alone):
                send(study, listener.port, listener.ae_title)
                done = wait_delivered(factory, [study], 120.0)
                if not done:
                    raise RuntimeError(f"X-ray {study.study_instance_uid} sent alone: no ORU")
                if i > 0:
                    alone_times.extend(done)
            with factory() as session:
                first = session.scalar(
                    select(Study).where(Study.study_instance_uid == alone[0].study_instance_uid)
                )
                assert first is not None
                click_study = first.id
            click_uid = pydicom.dcmread(alone[0].files[0], stop_before_pixels=True).SOPInstanceUID
            reader.click(click_study, click_uid, 0)  # the interactive worker loads its model
            reader.click(click_study, click_uid, 1)
            for i in range(args.interactive):
                elapsed = reader.click(click_study, click_uid, i)
                if elapsed is not None:
                    clicks_alone.append(elapsed)

            burst_over = threading.Event()

            def keep_clicking() -> None:
                i = 0
                while not burst_over.is_set():
                    clicks_burst.append(reader.click(click_study, click_uid, i))
                    i += 1
                    burst_over.wait(args.click_every)  # a radiologist's pace, not an ordering

            clicker = threading.Thread(target=keep_clicking, daemon=True)
            clicker.start()
            started = time.monotonic()
            with ThreadPoolExecutor(args.senders) as pool:
                if args.cxr_after_ct:
                    # The CTs first; the X-rays once the model is busy with a CT series.
                    list(pool.map(lambda s: send(s, listener.port, listener.ae_title),
                                  [s for s in studies if s.domain != "cxr"]))  # fmt: skip
                    wait_ct_drafting(factory, args.timeout)
                    studies_now = [s for s in studies if s.domain == "cxr"]
                else:
                    studies_now = studies
                list(pool.map(lambda s: send(s, listener.port, listener.ae_title), studies_now))
            print(f"sent {len(studies)} studies in {time.monotonic() - started:.1f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
            rows = wait_delivered(factory, studies, args.timeout)
            burst_over.set()
            clicker.join(timeout=120)
            profiling.close()
            kinds_alone = delivery_breakdown(factory, alone[1:])
            kinds_burst = delivery_breakdown(factory, [s for s in studies if s.domain == "cxr"])
            spans = job_timeline(factory, studies)
            engine.dispose()
    finally:
        if web is not None:
            web.stop()
        for worker in workers:
            worker.stop()
        delete_test_queues(prefix)
        harness.drop_database(DB_NAME)
    cxr = [r for r in rows if r.domain == "cxr"]
    ct = [r for r in rows if r.domain != "cxr"]
    span = (
        (max(r.delivered for r in cxr) - min(r.created for r in cxr)).total_seconds()
        if cxr
        else 0.0
    )
    answered = [c for c in clicks_burst if c is not None]
    result = {
        "cxr_p50_s": round(percentile([r.latency_s for r in cxr], 50), 2),
        "cxr_p95_s": round(percentile([r.latency_s for r in cxr], 95), 2),
        "ct_p50_s": round(percentile([r.latency_s for r in ct], 50), 2),
        "ct_p95_s": round(percentile([r.latency_s for r in ct], 95), 2),
        "studies_per_hour": round(len(cxr) / span * 3600, 0) if span > 0 else 0.0,
        "delivered": len(rows),
        "sent": len(studies),
        "stability_s": round(statistics.median([r.stability_s for r in rows]), 2) if rows else None,
        "cxr_alone_s": round(percentile([r.latency_s for r in alone_times], 50), 2),
        "interactive_alone_ms": round(percentile(clicks_alone, 50), 1),
        "interactive_p95_ms": round(percentile(answered, 95), 1),
        "interactive_n": len(clicks_burst),
        "interactive_failed": len(clicks_burst) - len(answered),
    }
    for name, group in (("cxr alone", alone_times), ("cxr", cxr), ("ct", ct)):
        if group:
            print(
                f"{name}: median queue {statistics.median(r.queue_s for r in group):.2f} s, "
                f"draft {statistics.median(r.draft_s for r in group):.2f} s, "
                f"deliver {statistics.median(r.deliver_s for r in group):.2f} s "
                f"(ORU claimed {statistics.median(r.oru_claim_s for r in group):.2f} s after "
                f"it was recorded, sent {statistics.median(r.oru_send_s for r in group):.2f} s "
                "after the claim)",
                file=sys.stderr,
            )
    for name, kinds in (("cxr alone", kinds_alone), ("cxr", kinds_burst)):
        for kind, (n, claim_s, send_s) in kinds.items():
            print(f"{name} {kind}: n={n} recorded→claimed {claim_s:.2f} s, "
                  f"claim→ACK {send_s:.2f} s", file=sys.stderr)  # fmt: skip
    print("\n".join(where_xray_waits(spans)), file=sys.stderr)
    if args.timeline is not None:
        args.timeline.write_text("".join(json.dumps(asdict(span)) + "\n" for span in spans))
    if args.profile_dir is not None:
        entries = (
            ("draft", "run_draft_job"), ("delivery", "attempt_delivery"), ("relay", "relay_once")
        )  # fmt: skip
        for name, entry in entries:
            collapsed = args.profile_dir / f"{name}.collapsed"
            if collapsed.exists():
                print("\n".join(where_time_goes(collapsed, entry)), file=sys.stderr)
    print(json.dumps(result))
    ok = len(rows) == len(studies) and not result["interactive_failed"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
