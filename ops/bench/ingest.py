"""Ingest benchmark: DCMTK storescu → {storescp --fork, Orthanc, our listener}, 1 and 8 associations.

    .venv/bin/python -m ops.bench.ingest [--n 2000] [--associations 8] [--listener-processes 2]
                                        [--profile-dir DIR]

N small CT-like instances (~40 KB each, studies of 250) are sent once over one association and
once (a second, distinct set, so nothing is a duplicate) split over `--associations` parallel
storescu processes, to each receiver in turn:
- DCMTK `storescp --fork` writing files (no fsync, no index): the ceiling for this machine;
- Orthanc with our configuration (services/pacs: SyncStorageArea, own SQLite index, routing
  plugin loaded but StableAge far beyond the run so it never routes);
- our listener with Postgres indexing into a scratch database (durable before 0x0000).
Every DCMTK-based process gets TCP_NODELAY=1 (otherwise ~11 instances/s per association here).
The last line is JSON: {"n", "ours_1", "ours_8", "storescp_1", "storescp_8", "orthanc_1",
"orthanc_8", "ratio_orthanc_8", "ratio_storescp_8"} in instances/s, and "cpu_ms_<receiver>_8":
the receiver's CPU time (all its processes, reaped children included) per instance with 8
associations, which other work on a shared machine disturbs far less than the rates.

With --route-slices N (e.g. 1000) a single N-slice CT series is also sent to an Orthanc whose
routing plugin forwards stable studies to our listener (StableAge --route-stable-age s), and
"route_<N>_s" in the JSON is the time from Orthanc's last accepted instance to the last of the
N rows committed in our database; "route_<N>_minus_stable_s" subtracts the StableAge wait.

With --profile-dir the listener runs under py-spy (sampling all its processes); the collapsed
stacks and a per-category summary are written there.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from shared.config import REPO_ROOT, get_settings

BENCH_UID_ROOT = "1.2.826.0.1.3680043.8.498.98."
INSTANCES_PER_STUDY = 250
PG_ADMIN_DSN = os.environ.get(
    "MEDREGA_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
NODELAY_ENV = {**os.environ, "TCP_NODELAY": "1"}
# The Orthanc that routes to our listener (--route-slices) calls under the PACS's AE title.
ROUTING_ORTHANC_AE = get_settings().pacs_ae_title


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    ae_title: str
    count_received: Callable[[], int]
    pid: int | None = None  # the receiver's top process (profiled with py-spy when asked)


def tree_cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system, reaped children included) of `pid` and its descendants."""
    if pid is None:
        return None
    ticks: dict[int, int] = {}
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # it exited meanwhile
        fields = text[text.rindex(")") + 2 :].split()
        process = int(stat.parent.name)
        parent[process] = int(fields[1])
        ticks[process] = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    tree = {pid}
    grew = True
    while grew:
        children = {p for p, pp in parent.items() if pp in tree} - tree
        tree |= children
        grew = bool(children)
    return sum(ticks.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


# --- test data ----------------------------------------------------------------------------------


def _template(size: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.PatientName = "Bench^Ingest"
    ds.PatientID = "BENCH"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyDescription = "CT BENCH"
    ds.AccessionNumber = "BENCH"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.Modality = "CT"
    ds.Manufacturer = "Bench"
    ds.SeriesNumber = 1
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    y, x = np.mgrid[0:size, 0:size]
    disc = ((x - size / 2) ** 2 + (y - size / 2) ** 2) < (size * 0.4) ** 2
    ds.PixelData = np.where(disc, 1064, 24).astype(np.uint16).tobytes()
    return ds


def write_instances(
    directory: Path, n: int, size: int, per_study: int = INSTANCES_PER_STUDY
) -> list[Path]:
    """`n` CT instances (studies of `per_study`) under `directory`, in send order."""
    directory.mkdir(parents=True, exist_ok=True)
    ds = _template(size)
    paths: list[Path] = []
    for index in range(n):
        if index % per_study == 0:
            ds.StudyInstanceUID = generate_uid(prefix=BENCH_UID_ROOT)
            ds.SeriesInstanceUID = generate_uid(prefix=BENCH_UID_ROOT)
            ds.FrameOfReferenceUID = generate_uid(prefix=BENCH_UID_ROOT)
        sop_uid = generate_uid(prefix=BENCH_UID_ROOT)
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        ds.InstanceNumber = index % per_study + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(index % per_study)]
        path = directory / f"{index:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def split_into_directories(paths: list[Path], parts: int, root: Path) -> list[Path]:
    """Contiguous chunks (whole studies where possible), one directory per association."""
    directories: list[Path] = []
    chunk = -(-len(paths) // parts)
    for part in range(parts):
        directory = root / f"assoc{part}"
        directory.mkdir(parents=True)
        for path in paths[part * chunk : (part + 1) * chunk]:
            path.rename(directory / path.name)
        directories.append(directory)
    return directories


# --- sending ------------------------------------------------------------------------------------


def send(endpoint: Endpoint, directories: list[Path]) -> float:
    """Seconds for parallel storescu processes (one per directory) to send everything."""
    commands = [
        [
            "storescu", "-aet", "STORESCU", "-aec", endpoint.ae_title, "-R", "+sd",
            endpoint.host, str(endpoint.port), str(directory),
        ]
        for directory in directories
    ]  # fmt: skip
    started = time.perf_counter()
    processes = [
        subprocess.Popen(c, env=NODELAY_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for c in commands
    ]
    outputs = [p.communicate()[0] for p in processes]
    elapsed = time.perf_counter() - started
    for process, output in zip(processes, outputs, strict=True):
        if process.returncode != 0:
            raise RuntimeError(f"storescu failed ({process.returncode}): {output[-2000:]!r}")
    return elapsed


# --- receivers ----------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_echo(port: int, ae_title: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = subprocess.run(
            ["echoscu", "-aet", "STORESCU", "-aec", ae_title, "127.0.0.1", str(port)],
            env=NODELAY_ENV,
            capture_output=True,
        )
        if result.returncode == 0:
            return
        time.sleep(0.2)
    raise TimeoutError(f"no C-ECHO answer on port {port}")


@contextmanager
def storescp_receiver(workdir: Path) -> Iterator[Endpoint]:
    out = workdir / "storescp"
    out.mkdir()
    port = free_port()
    process = subprocess.Popen(
        [
            "storescp",
            "--fork",
            "-aet",
            "STORESCP",
            "--max-pdu",
            "131072",
            "-od",
            str(out),
            str(port),
        ],
        env=NODELAY_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_echo(port, "STORESCP")
        yield Endpoint("127.0.0.1", port, "STORESCP", lambda: len(list(out.iterdir())), process.pid)
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def orthanc_receiver(workdir: Path) -> Iterator[Endpoint]:
    from services.pacs.local_orthanc import running_orthanc

    with running_orthanc(
        workdir / "orthanc",
        get_settings(),
        stable_age_s=86_400,  # never route during the run: we measure ingest only
        listener_port=free_port(),
    ) as orthanc:

        def count() -> int:
            return int(orthanc.client.get_json("/statistics")["CountInstances"])

        pid = orthanc.process.pid if orthanc.process is not None else None
        yield Endpoint("127.0.0.1", orthanc.dicom_port, orthanc.ae_title, count, pid)


# A reference point, not a product: pynetdicom writing `encoded_dataset()` to files, no fsync, no
# index, one process. The gap to "ours" is what durability and indexing cost.
_BARE_PYNETDICOM_SCP = """
import sys
from pathlib import Path
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
out = Path(sys.argv[2])
def on_store(event):
    uid = event.request.AffectedSOPInstanceUID
    (out / f"{uid}.dcm").write_bytes(event.encoded_dataset())
    return 0x0000
ae = AE(ae_title="BARE")
ae.supported_contexts = AllStoragePresentationContexts
ae.add_supported_context(Verification)
ae.maximum_associations = 16
ae.maximum_pdu_size = 262144
ae.start_server(("127.0.0.1", int(sys.argv[1])), evt_handlers=[(evt.EVT_C_STORE, on_store)])
"""


@contextmanager
def bare_pynetdicom_receiver(workdir: Path) -> Iterator[Endpoint]:
    out = workdir / "bare"
    out.mkdir()
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", _BARE_PYNETDICOM_SCP, str(port), str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_echo(port, "BARE")
        yield Endpoint("127.0.0.1", port, "BARE", lambda: len(list(out.iterdir())), process.pid)
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def scratch_database() -> Iterator[str]:
    from alembic import command
    from alembic.config import Config

    name = f"medrega_bench_{os.getpid()}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    url = f"{base}/{name}"
    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.attributes["url"] = url
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")
    try:
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def listener_receiver(workdir: Path, processes: int) -> Iterator[Endpoint]:
    port = free_port()
    with scratch_database() as url:
        env = {
            **os.environ,
            "MEDREGA_DATABASE_URL": url,
            "MEDREGA_LISTENER_PORT": str(port),
            "MEDREGA_LISTENER_HOST": "127.0.0.1",
            "MEDREGA_LISTENER_PROCESSES": str(processes),
            # The bench sender by AE title and address (the defaults hold no test senders).
            "MEDREGA_LISTENER_ALLOWED_PEERS": f"STORESCU@127.0.0.1,{ROUTING_ORTHANC_AE}@127.0.0.1",
            "MEDREGA_LISTENER_ALLOWED_AES": "",
            "MEDREGA_STORAGE_DIR": str(workdir / "listener"),
            "MEDREGA_STORAGE_MIN_FREE_BYTES": str(1 << 30),
            "MEDREGA_STABLE_AGE_S": "86400",
            "MEDREGA_LOG_LEVEL": "WARNING",
        }
        command = [sys.executable, "-m", "services.listener.main"]
        log = (workdir / "listener.log").open("wb")
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_echo(port, get_settings().listener_ae_title)
            # With several processes, let every child bind before measuring.
            time.sleep(1.0 if processes > 1 else 0.0)

            def count() -> int:
                with psycopg.connect(url.replace("+psycopg", "")) as connection:
                    row = connection.execute("SELECT count(*) FROM instances").fetchone()
                    return int(row[0]) if row else 0

            yield Endpoint("127.0.0.1", port, get_settings().listener_ae_title, count, process.pid)
        finally:
            process.terminate()  # SIGTERM: the listener drains and stops its children
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()


def route_seconds(
    workdir: Path, files: Path, listener: Endpoint, stable_age_s: int, timeout_s: float = 900.0
) -> float:
    """Seconds from Orthanc's last accepted instance of the series in `files` to the last of its
    rows in our database, through the routing plugin (StableAge included)."""
    from services.pacs.local_orthanc import running_orthanc

    n = len(list(files.iterdir()))
    already = listener.count_received()
    with running_orthanc(
        workdir / "orthanc-route",
        get_settings(),
        stable_age_s=stable_age_s,
        listener_port=listener.port,
    ) as orthanc:
        endpoint = Endpoint("127.0.0.1", orthanc.dicom_port, orthanc.ae_title, lambda: 0)
        send(endpoint, [files])
        sent_at = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        while listener.count_received() < already + n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the routed series did not arrive within {timeout_s} s")
            time.sleep(0.05)
        return time.perf_counter() - sent_at


# --- profile summary ----------------------------------------------------------------------------


@contextmanager
def profiled(
    pid: int | None, output: Path | None, *, idle: bool = False, gil: bool = False
) -> Iterator[None]:
    """Sample `pid` and its children with py-spy: on-CPU collapsed stacks (idle threads left out;
    with `idle` they are kept, for where a latency's wall-clock time goes; with `gil` only the
    thread holding the GIL is sampled: Python's own CPU, without the threads py-spy counts as
    active while they wait in select, sleep or fsync)."""
    if pid is None or output is None:
        yield
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    py_spy = str(Path(sys.executable).parent / "py-spy")
    command = [py_spy, "record", "--pid", str(pid), "--subprocesses", "--rate", "250",
               "--format", "raw", "--nonblocking", "-o", str(output)]  # fmt: skip
    if idle:
        command.append("--idle")
    if gil:
        command.append("--gil")
    sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # let it attach to every process
    try:
        yield
    finally:
        sampler.send_signal(2)  # SIGINT: py-spy writes the profile and exits
        _, errors = sampler.communicate(timeout=60)
        if not output.exists():
            print(f"py-spy wrote no profile: {errors.decode(errors='replace')[-500:]}")


# A sample goes to the first category any of whose keys appears anywhere in its stack, in this
# order: what a C-STORE handler calls first, then pynetdicom's message coding, then the loops
# every association thread runs in.
CATEGORIES = [
    ("header parse (pydicom)", ("dataset_header.py",)),
    ("file write + fsync + sha256", ("storage.py",)),
    ("index (psycopg, SQL)", ("indexer.py", "psycopg")),
    ("waiting on the group commit", ("concurrent/futures",)),
    ("DIMSE/PDU decode + encode", ("dimse", "pdu.py", "pdu_primitives.py", "fsm.py", "encoding.py",
                                   "Socket.recv", "Socket.send", "_read_pdu_data", "_decode_pdu")),
    ("association loops (poll/wait/wake)", ("reactor.py", "dul.py", "association.py", "select",
                                            "sleep", "queue.py", "threading.py")),
]  # fmt: skip


def summarise_profile(collapsed: Path) -> list[str]:
    """Per-category share of samples (CATEGORIES) plus the top leaf functions."""
    totals: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        leaves[frames[-1]] += count
        category = next(
            (name for name, keys in CATEGORIES if any(k in stack for k in keys)), "other"
        )
        totals[category] += count
    lines = [f"profile: {total} on-CPU samples"]
    lines += [f"  {100 * c / max(total, 1):5.1f}%  {name}" for name, c in totals.most_common()]
    lines.append("top leaf frames:")
    lines += [f"  {100 * c / max(total, 1):5.1f}%  {name}" for name, c in leaves.most_common(15)]
    return lines


# --- main ---------------------------------------------------------------------------------------


def load() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=2000, help="instances per run")
    parser.add_argument("--size", type=int, default=140, help="rows=columns (140 → ~40 KB)")
    parser.add_argument("--associations", type=int, default=8)
    parser.add_argument("--listener-processes", type=int, default=max(os.cpu_count() or 1, 1))
    parser.add_argument(
        "--receivers",
        default="storescp,orthanc,bare,ours",
        help="bare = pynetdicom writing files only (reference, not in the JSON line)",
    )
    parser.add_argument("--profile-dir", type=Path, help="run the listener under py-spy")
    parser.add_argument(
        "--profile-gil", action="store_true", help="py-spy samples only the GIL holder"
    )
    parser.add_argument(
        "--route-slices", type=int, default=0, help="also route one CT of N slices via Orthanc"
    )
    parser.add_argument("--route-stable-age", type=int, default=2, help="Orthanc StableAge, s")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="medrega-bench-"))
    print(f"workdir {workdir}; load average at start {load()}", flush=True)
    try:
        single = [workdir / "single"]
        write_instances(single[0], args.n, args.size)
        parallel_paths = write_instances(workdir / "parallel-all", args.n, args.size)
        parallel = split_into_directories(parallel_paths, args.associations, workdir / "parallel")
        size_kb = (single[0] / "000000.dcm").stat().st_size / 1024
        print(f"{args.n} instances of {size_kb:.1f} KB per run", flush=True)

        receivers: dict[str, Callable[[Path], AbstractContextManager[Endpoint]]] = {
            "storescp": storescp_receiver,
            "orthanc": orthanc_receiver,
            "bare": bare_pynetdicom_receiver,
            "ours": lambda w: listener_receiver(w, args.listener_processes),
        }
        results: dict[str, float | int | None] = {"n": args.n}
        for name in ("ours", "storescp", "orthanc"):
            results[f"{name}_1"] = results[f"{name}_8"] = None
        reference: dict[str, float] = {}
        for name in args.receivers.split(","):
            receiver_dir = workdir / f"recv-{name}"
            receiver_dir.mkdir()
            with receivers[name](receiver_dir) as endpoint:
                for label, directories in (("1", single), ("8", parallel)):
                    profile = (
                        args.profile_dir / f"{name}_{label}.collapsed"
                        if args.profile_dir is not None and name == "ours"
                        else None
                    )
                    # Flush what earlier runs left dirty (storescp does not fsync) so that no
                    # receiver pays for another's writeback.
                    os.sync()
                    cpu_before = tree_cpu_s(endpoint.pid)
                    with profiled(endpoint.pid, profile, gil=args.profile_gil):
                        seconds = send(endpoint, directories)
                    rate = args.n / seconds
                    cpu_after = tree_cpu_s(endpoint.pid)
                    cpu_ms = (
                        round((cpu_after - cpu_before) * 1000 / args.n, 2)
                        if cpu_before is not None and cpu_after is not None
                        else None
                    )
                    if label == "8":
                        results[f"cpu_ms_{name}_8"] = cpu_ms
                    if name == "bare":
                        reference[f"{name}_{label}"] = round(rate, 1)
                    else:
                        results[f"{name}_{label}"] = round(rate, 1)
                    print(
                        f"{name:9s} {len(directories)} assoc: {seconds:6.2f} s  {rate:7.1f} inst/s"
                        f"  cpu {cpu_ms} ms/instance  (load {load()})",
                        flush=True,
                    )
                received = endpoint.count_received()
                if name == "ours" and args.route_slices > 0:
                    route_dir = workdir / "route"
                    write_instances(route_dir, args.route_slices, args.size, args.route_slices)
                    routed = route_seconds(workdir, route_dir, endpoint, args.route_stable_age)
                    key = f"route_{args.route_slices}"
                    results[f"{key}_s"] = round(routed, 2)
                    results[f"{key}_minus_stable_s"] = round(routed - args.route_stable_age, 2)
                    print(f"routed {args.route_slices} slices via Orthanc in {routed:.2f} s "
                          f"(StableAge {args.route_stable_age} s)  (load {load()})", flush=True)  # fmt: skip
                if received != 2 * args.n:
                    print(f"WARNING: {name} holds {received} instances, expected {2 * args.n}")
            shutil.rmtree(receiver_dir, ignore_errors=True)

        for label in ("1", "8"):
            collapsed = args.profile_dir / f"ours_{label}.collapsed" if args.profile_dir else None
            if collapsed is not None and collapsed.exists():
                summary = [f"[listener, {label} association(s)]", *summarise_profile(collapsed)]
                collapsed.with_suffix(".summary.txt").write_text("\n".join(summary) + "\n")
                print("\n".join(summary))

        ours_8, orthanc_8, storescp_8 = (
            results.get(k) for k in ("ours_8", "orthanc_8", "storescp_8")
        )
        results["ratio_orthanc_8"] = round(ours_8 / orthanc_8, 3) if ours_8 and orthanc_8 else None
        results["ratio_storescp_8"] = (
            round(ours_8 / storescp_8, 3) if ours_8 and storescp_8 else None
        )
        print(f"load average at end {load()}; listener processes {args.listener_processes}")
        if reference:
            print(f"reference (bare pynetdicom, files only, no fsync): {json.dumps(reference)}")
        print(json.dumps(results))
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
