"""Chaos benchmark: the whole stack under SIGKILLs and outages; count what the receivers got.

On the real stack on 127.0.0.1 (a scratch PostgreSQL database, RabbitMQ with this run's own
queues, Orthanc with our routing plugin, listener, outbox relay, the model ("gpu") worker with
one thread, the delivery ("io") worker, the web app, and the RIS sink `ops/ris_sink.py` as the MLLP
peer), `--studies` phantom studies (about 3/4 chest X-rays, 1/4 chest CTs of `--ct-slices`
slices) are sent to Orthanc with storescu at seeded moments of the chaos window. About 40 % are
re-sent late: once their first model draft is in the database, new instances follow (CT: slices
held back; X-ray: a further image of the study). About 60 % of those are signed through the web
API (a radiologist created with `services.web.cli`, signed in with CSRF) right after the late
instances were received, half at once and half once the re-draft job is queued or running;
a stale version (409) is reloaded and signed again. A third of the signed ones are amended
(an edit, then sign again: a corrected version). Meanwhile the GPU worker, the delivery worker,
the relay and the listener are SIGKILLed `--kills` times at seeded moments (round-robin over
the four, shuffled) and restarted with the commands the tests and the stack use; the RIS sink is
stopped (SIGTERM) and later started again, and Orthanc (the PACS) likewise, each once. Then the
bench waits until everything is settled or `--settle-s` passed since the last fault and the
last action of the bench.

Counts (per study sent unless said otherwise; each study counted once per count):

    drafted              studies with at least one model-authored report version.
    lost                 a study not in the database, an instance sent that is not in the
                         database, a study without a report, or whose outcome version (the
                         highest signed/corrected one, else the highest model draft) lacks a
                         delivered SR or ORU; or any delivery the database calls delivered
                         that is not at its receiver (control ID accepted AA in the RIS sink's
                         log; SR SOP Instance UID in Orthanc); or an outcome that does not
                         cover every instance sent unless it is final and the study is flagged
                         `new_images_after_signoff`. A study the model declined (every
                         instance in, no draft, state 'not_applicable', the reason on its job)
                         is not lost: it is counted in `not_applicable`.
    duplicate_deliveries control IDs the RIS accepted with different content (the inbox file is
                         hashed without MSH-7, the send time, whenever it changes); SR SOP
                         Instance UIDs stored more than once in Orthanc, or stored with a
                         verification/completion flag or study that is not what their delivery
                         row names. Re-sends of the same content are at-least-once delivery to
                         idempotent receivers, allowed by design: `ris_resends` counts the AA
                         copies of a control ID beyond the first (Orthanc keeps one copy per
                         SOP Instance UID and does not log a re-send, so SR re-sends are not
                         counted).
    stuck                rows not terminal once settled: draft jobs not done/not_applicable/
                         failed/superseded, deliveries not delivered/failed/cancelled, studies
                         still receiving/stable/drafting.
    order_violations     per receiver and study, in the order the receiver took them (the sink
                         log's order; Orthanc's change sequence for SRs): a preliminary (P,
                         unverified SR) after a final (F/C); a C before any F; a version lower
                         than one already taken (a re-send of the same control ID / UID is not
                         a new event). Plus deliveries recorded 'cancelled' whose message
                         reached the receiver anyway.
    signed_overwritten   studies with a signed/corrected version followed by a model-authored
                         version; or, once signed, a study state other than 'signed' (sampled
                         every second during the run, and at the end) or a worklist status
                         other than signed/delivery_failed (the web API, at the end).

Reported apart (not goals): `not_applicable` (above), `signed_uncovered_unflagged` (the latest
final version was signed on a draft that did not cover instances the study already held when it
was signed, and the study is not flagged), `failed_deliveries` (rows 'failed', whichever
version: a current one also counts as lost), `ris_resends`, `ris_accepted`, `pacs_srs`,
`late_resent`, `signed`, `amended`, `bench_errors` (the bench's own failed steps).

Last line JSON: {"kills", "studies", "drafted", "lost", "duplicate_deliveries", "stuck",
"order_violations", "signed_overwritten", "seed", "elapsed_s", ...}; the goal is the last five
counts at 0 on every seed. Exit status 0 when they are, 1 when not, 2 when the bench failed.

    python -m ops.bench.chaos [--seed 1] [--studies 40] [--kills 20] [--quick] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import pydicom
from pydicom.uid import generate_uid

from model.phantoms.__main__ import write_phantom_study
from model.phantoms.splits import seeds
from ops.bench import harness
from ops.bench.chaos_audit import Database, InboxWatcher, RadiologistApi, audit, settled
from ops.bench.chaos_stack import ChaosStack
from tests.support.worker_process import delete_test_queues

KILL_TARGETS = ("gpu", "io", "relay", "listener")
QUICK = {"studies": 6, "kills": 4, "window_s": 50.0, "ct_slices": 24, "outage_s": (6.0, 10.0)}


@dataclass
class BenchStudy:
    index: int
    domain: str
    study_uid: str
    initial: list[Path]
    late: list[Path]
    late_uids: list[str]
    all_uids: set[str]
    send_at: float
    late_delay_s: float = 0.0
    sign: bool = False
    sign_mode: str = ""  # "at_once" | "during_redraft"
    amend: bool = False
    amend_delay_s: float = 0.0
    study_id: int | None = None
    events: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    signed_version: int | None = None
    redraft_job_at_sign: str | None = None


@dataclass
class Fault:
    at_s: float
    kind: str  # kill | ris_down | ris_up | pacs_down | pacs_up
    target: str = ""
    downtime_s: float = 0.0


def late_image(path: Path, out_dir: Path, salt: str) -> tuple[Path, str]:
    """A further image of the same study and series, with its own derived SOP Instance UID."""
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), salt])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = int(ds.get("InstanceNumber", 1) or 1) + 1
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"late-{ds.SOPInstanceUID}.dcm"
    ds.save_as(target, enforce_file_format=True)
    return target, str(ds.SOPInstanceUID)


def prepare_studies(args: argparse.Namespace, rng: random.Random, out: Path) -> list[BenchStudy]:
    n_ct = max(1, round(args.studies / 4))
    domains = ["chest_ct"] * n_ct + ["cxr"] * (args.studies - n_ct)
    rng.shuffle(domains)
    studies = []
    for index, (domain, phantom_seed) in enumerate(
        zip(domains, seeds("test", args.studies), strict=True)
    ):
        if domain == "cxr":
            written = write_phantom_study("cxr", phantom_seed, out, max_side=args.cxr_max_side)
        else:
            written = write_phantom_study("chest_ct", phantom_seed, out, n_slices=args.ct_slices)
        files = sorted(written.files)
        studies.append(
            BenchStudy(
                index=index,
                domain=domain,
                study_uid=written.study_instance_uid,
                initial=files,
                late=[],
                late_uids=[],
                all_uids=set(written.sop_instance_uids),
                send_at=rng.uniform(0.0, args.window_s * 0.5),
            )
        )
    n_late = max(1, round(0.4 * len(studies)))
    late = rng.sample(studies, n_late)
    for study in late:
        study.late_delay_s = rng.uniform(0.0, 5.0)
        if study.domain == "cxr":
            path, uid = late_image(study.initial[0], out / "late", f"chaos-{args.seed}")
            study.late, study.late_uids = [path], [uid]
            study.all_uids.add(uid)
        else:
            held = max(1, len(study.initial) // 8)
            study.late = study.initial[-held:]
            study.initial = study.initial[:-held]
            study.late_uids = [_sop_uid(p) for p in study.late]
    n_sign = max(1, round(0.6 * n_late))
    for position, study in enumerate(rng.sample(late, n_sign)):
        study.sign = True
        study.sign_mode = "at_once" if position % 2 == 0 else "during_redraft"
    signed = [s for s in late if s.sign]
    for study in rng.sample(signed, max(1, round(len(signed) / 3))):
        study.amend = True
        study.amend_delay_s = rng.uniform(0.0, 3.0)
    return studies


def _sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def fault_schedule(args: argparse.Namespace, rng: random.Random) -> list[Fault]:
    targets = [KILL_TARGETS[i % len(KILL_TARGETS)] for i in range(args.kills)]
    rng.shuffle(targets)
    faults = [
        Fault(rng.uniform(3.0, args.window_s), "kill", target, rng.uniform(0.0, 3.0))
        for target in targets
    ]
    low, high = args.outage_s
    for name, (start, end) in (("ris", (0.15, 0.55)), ("pacs", (0.3, 0.7))):
        begin = rng.uniform(start * args.window_s, end * args.window_s)
        faults.append(Fault(begin, f"{name}_down"))
        faults.append(Fault(begin + rng.uniform(low, high), f"{name}_up"))
    return sorted(faults, key=lambda f: f.at_s)


class Run:
    """Shared state of one run: the stack, the database, the API, the clock, the stop flag."""

    def __init__(self, stack: ChaosStack, db: Database, api: RadiologistApi, deadline: float):
        self.stack = stack
        self.db = db
        self.api = api
        self.t0 = time.monotonic()
        self.deadline = deadline
        self.stop = threading.Event()
        self.send_slots = threading.Semaphore(2)
        self.last_action = time.monotonic()
        self.signed_ids: set[int] = set()
        self.seen_unsigned: set[int] = set()
        self.lock = threading.Lock()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def acted(self) -> None:
        with self.lock:
            self.last_action = time.monotonic()

    def wait_until(
        self, predicate: Callable[[], object], timeout_s: float, step_s: float = 0.5
    ) -> bool:
        end = min(time.monotonic() + timeout_s, self.deadline)
        while not self.stop.is_set() and time.monotonic() < end:
            if predicate():
                return True
            time.sleep(step_s)
        return False


def send(run: Run, study: BenchStudy, files: list[Path], what: str) -> bool:
    """storescu to the PACS; while the PACS is down, try again (a modality's queue does)."""
    attempts = 0
    while not run.stop.is_set() and time.monotonic() < run.deadline:
        attempts += 1
        with run.send_slots:
            try:
                harness.storescu(
                    files, run.stack.pacs_dicom_port, run.stack.settings.pacs_ae_title,
                    calling_ae="CHAOS_MODALITY", timeout_s=120,
                )  # fmt: skip
                study.events.append(f"{run.elapsed():.1f}s {what} sent ({attempts} tries)")
                run.acted()
                return True
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                pass  # refused while the PACS is down, or cut off mid-association
        time.sleep(2.0)
    study.errors.append(f"{what} never sent")
    return False


def lifecycle(run: Run, study: BenchStudy) -> None:
    """Send, maybe re-send late, maybe sign (and amend): what one study goes through."""
    try:
        if not run.wait_until(lambda: run.elapsed() >= study.send_at, 3600, 0.2):
            return
        if not send(run, study, study.initial, "initial") or not study.late:
            return
        if not run.wait_until(lambda: run.db.draft_or_final(study.study_uid), 300, 1.0):
            study.errors.append("no first draft: late instances not sent")
            return
        if not run.db.has_model_draft(study.study_uid):
            return  # not applicable or failed: nothing to re-draft (counted by the audit)
        time.sleep(study.late_delay_s)
        if not send(run, study, study.late, "late") or not study.sign:
            return
        study.study_id = run.db.study_id(study.study_uid)
        if not run.wait_until(
            lambda: (
                run.db.count_instances(study.study_uid, study.late_uids) == len(study.late_uids)
            ),
            300,
            0.25,
        ):
            study.errors.append("late instances never reached the database: not signed")
            return
        if study.sign_mode == "during_redraft":
            total = len(study.all_uids)
            run.wait_until(
                lambda: run.db.redraft_job_state(study.study_uid, total) in ("queued", "running"),
                30,
                0.1,
            )
        assert study.study_id is not None
        study.redraft_job_at_sign = run.db.redraft_job_state(study.study_uid, len(study.all_uids))
        version = run.api.sign(study.study_id, study.events)
        run.acted()
        if version is None:
            study.errors.append("sign failed")
            return
        study.signed_version = version
        with run.lock:
            run.signed_ids.add(study.study_id)
        if study.amend:
            time.sleep(study.amend_delay_s)
            if run.api.amend(study.study_id, study.events) is None:
                study.errors.append("amend failed")
            run.acted()
    except Exception as exc:  # a bench bug must not hang the run: recorded, reported
        study.errors.append(f"lifecycle error: {exc!r}")


def watch_signed(run: Run) -> None:
    """Every second: a study once signed must stay 'signed'."""
    while not run.stop.wait(1.0):
        with run.lock:
            ids = list(run.signed_ids)
        if not ids:
            continue
        try:
            for study_id, state in run.db.study_states(ids):
                if state != "signed":
                    with run.lock:
                        run.seen_unsigned.add(study_id)
        except Exception as exc:  # the database is not a fault target; note and go on
            print(f"watch: {exc!r}", file=sys.stderr)


def run_faults(run: Run, faults: list[Fault], log: list[str]) -> int:
    """Apply the schedule in order (late when a restart took long); the number of kills."""
    stack = run.stack
    kills = 0
    down: set[str] = set()  # services in a planned outage
    for fault in faults:
        while run.elapsed() < fault.at_s and not run.stop.is_set():
            time.sleep(0.1)
        if run.stop.is_set():
            break
        for name, service in stack.services.items():
            if name not in down and not service.running():
                log.append(f"{run.elapsed():.1f}s {name} found dead (not by us): restarting")
                service.start()
        started = run.elapsed()
        if fault.kind == "kill":
            service = stack.services[fault.target]
            service.kill()
            kills += 1
            time.sleep(fault.downtime_s)
            service.start()
            log.append(
                f"{started:.1f}s SIGKILL {fault.target}, restarted after "
                f"{run.elapsed() - started:.1f}s"
            )
            continue
        name = {"ris": "ris", "pacs": "orthanc"}[fault.kind.split("_")[0]]
        if fault.kind.endswith("_down"):
            if name == "orthanc":
                stack.stop_orthanc()
            else:
                stack.services[name].stop()
            down.add(name)
        else:
            stack.services[name].start()
            down.discard(name)
        log.append(f"{started:.1f}s {fault.kind}")
    return kills


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--studies", type=int, default=None, help="default 40 (quick: 6)")
    parser.add_argument("--kills", type=int, default=None, help="default 20 (quick: 4)")
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--window-s", type=float, default=None, help="chaos window (200; 50)")
    parser.add_argument("--ct-slices", type=int, default=None, help="default 24")
    parser.add_argument("--cxr-max-side", type=int, default=1024)
    parser.add_argument("--settle-s", type=float, default=150.0,
                        help="after the last fault and action; longer than a delivery's "
                             "2-minute attempt lease (a worker killed mid-send holds it)")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the work dir and database")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else {
        "studies": 40, "kills": 20, "window_s": 200.0, "ct_slices": 24, "outage_s": (15.0, 30.0)
    }  # fmt: skip
    for name in ("studies", "kills", "window_s", "ct_slices"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    args.outage_s = defaults["outage_s"]
    if args.studies < 2 or args.kills < 0 or args.window_s <= 5:
        parser.error("need --studies >= 2, --kills >= 0, --window-s > 5")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    rng = random.Random(args.seed)
    db_name = f"medrega_bench_chaos_{os.getpid()}"
    prefix = f"chaos{os.getpid()}-"
    work = Path(tempfile.mkdtemp(prefix="medrega-bench-chaos-"))

    def on_term(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    print(f"chaos seed {args.seed}: {args.studies} studies, {args.kills} kills, work {work}",
          file=sys.stderr, flush=True)  # fmt: skip
    studies = prepare_studies(args, rng, work / "in")
    faults = fault_schedule(args, rng)
    stack: ChaosStack | None = None
    result: dict[str, object] | None = None
    status = 2
    try:
        url = harness.scratch_database(db_name)
        stack = ChaosStack(work, url, prefix)
        stack.start_all()
        print(f"stack up at {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        db = Database(harness.libpq_dsn(url))
        api = RadiologistApi.create(stack, url)
        deadline = time.monotonic() + args.window_s + 600.0
        run = Run(stack, db, api, deadline)
        inbox = InboxWatcher(stack.ris_inbox).start()
        fault_log: list[str] = []
        threads = [threading.Thread(target=lifecycle, args=(run, s), daemon=True) for s in studies]
        threads.append(threading.Thread(target=watch_signed, args=(run,), daemon=True))
        for thread in threads:
            thread.start()
        kills = run_faults(run, faults, fault_log)
        last_fault = time.monotonic()
        for thread in threads[:-1]:
            thread.join(timeout=max(1.0, deadline - time.monotonic()))
        print(f"faults done, bench actions done at {time.monotonic() - started:.0f} s; settling",
              file=sys.stderr, flush=True)  # fmt: skip
        settle_from = max(last_fault, run.last_action)
        while time.monotonic() < settle_from + args.settle_s:
            if settled(db, studies):
                break
            time.sleep(2.0)
        settle_s = time.monotonic() - settle_from
        run.stop.set()
        result, details = audit(run, studies, stack, inbox)
        result = {
            "kills": kills,
            "studies": len(studies),
            **result,
            "seed": args.seed,
            "elapsed_s": round(time.monotonic() - started, 1),
            "settle_s": round(settle_s, 1),
        }
        details["faults"] = fault_log
        details["studies"] = {
            s.study_uid: {"domain": s.domain, "events": s.events, "errors": s.errors,
                          "sign_mode": s.sign_mode, "redraft_job_at_sign": s.redraft_job_at_sign}
            for s in studies
        }  # fmt: skip
        (work / "chaos-details.json").write_text(json.dumps(details, indent=1))
        for line in fault_log:
            print(f"fault {line}", file=sys.stderr)
        for key in ("lost", "duplicate_deliveries", "stuck", "order_violations",
                    "signed_overwritten", "not_applicable", "signed_uncovered_unflagged",
                    "failed_deliveries", "bench_errors"):  # fmt: skip
            for problem in details.get(key, []):  # type: ignore[attr-defined]
                print(f"{key}: {problem}", file=sys.stderr)
        counts = [result[k] for k in ("lost", "duplicate_deliveries", "stuck",
                                      "order_violations", "signed_overwritten")]  # fmt: skip
        status = 0 if all(c == 0 for c in counts) else 1
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        status = 130
    except Exception as exc:  # the bench itself failed (a service would not start): say so
        traceback.print_exc()
        result = {"error": repr(exc)[:500], "seed": args.seed,
                  "elapsed_s": round(time.monotonic() - started, 1)}  # fmt: skip
        status = 2
    finally:
        if stack is not None:
            stack.stop_all()
        try:
            delete_test_queues(prefix)
        except Exception as exc:  # the broker is not ours to fix; say so
            print(f"could not delete queues {prefix}*: {exc!r}", file=sys.stderr)
        if not args.keep:
            harness.drop_database(db_name)
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work} and database {db_name}", file=sys.stderr)
    if result is not None:
        print(json.dumps(result), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
