"""Scale on one machine: chest X-ray throughput and p95 with 1 and 2 model-worker processes and
1 and 2 listener processes, the scaling efficiency, and the CPU time each study costs.

Each configuration runs on its own scratch database and queues: `Nw_Ml` is N model workers (one
thread each, as one per GPU) and M listeners; with two listeners the machine runs two "nodes"
(tests/scale/nodes.py: each its own storage folder, listener and file endpoint, no shared disk),
the studies are sent half to each, and a worker drafting the other node's study fetches its
pixels over that node's file endpoint. One delivery worker and one relay in every
configuration; a DCMTK storescp is the PACS, the MLLP sink the RIS.

Per configuration: a warm-up (two X-rays per worker, until every worker has drafted one: the
model is loaded), then `--cxr` chest X-rays sent at once from `--senders` senders.

    cxr_per_hour   X-rays delivered per hour: first draft job created → last ORU acknowledged
    p95_s          ORU acknowledged − draft job created (the stability wait excluded), p95
    cpu_s_per_study  CPU seconds (user + system) of all our processes during the burst / studies
                     (PostgreSQL and RabbitMQ, shared with other work on this machine, excluded)

`efficiency_2w` = cxr_per_hour_2w / (2 × cxr_per_hour_1w): 1.0 is perfect scaling. On a
machine with few cores the model workers, the listener, the delivery worker and the databases
share them: efficiency is bounded by the cores, which the CPU time per study shows.

    nice python -m ops.bench.scale [--cxr 30] [--senders 4] [--configs 1w_1l,2w_1l,1w_2l,2w_2l]

Last line JSON: {"cxr_per_hour_1w", "cxr_per_hour_2w", "efficiency_2w", "cxr_per_hour_2l",
"p95_s_1w", "p95_s_2w", "cpu_s_per_study_1w", "cpu_s_per_study_2w", "cores", "loadavg_start",
"loadavg_end", "runs": {config: {...}}}; `_2w` is 2 workers with 1 listener, `_2l` is 2 workers
with 2 listeners (the two-node layout).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from model.phantoms.__main__ import write_phantom_study
from model.phantoms.dicom_writer import WrittenStudy
from model.phantoms.splits import seeds
from ops.bench import harness
from ops.bench.e2e import StudyTimes, percentile, send, wait_delivered
from ops.ris_sink import RisSink
from shared.db.models import DraftJob
from tests.scale.nodes import Node, start_node
from tests.support.listener_process import free_port
from tests.support.worker_process import delete_test_queues

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SENDER_AE = "STORESCU"


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def cpu_seconds(roots: list[int]) -> float:
    """User + system CPU seconds of these processes and every live descendant."""
    tree = _children()
    total = 0.0
    pending = list(roots)
    while pending:
        pid = pending.pop()
        pending.extend(tree.get(pid, []))
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    return total


def _pids(nodes: list[Node]) -> list[int]:
    pids: list[int] = []
    for node in nodes:
        if node.listener is not None:
            pids.append(node.listener.process.pid)
        pids += [p.process.pid for p in [*node.processes, *node.draft_workers]]
    return pids


def _workers_that_drafted(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        with sessionmaker(engine)() as session:
            return {w for w in session.scalars(select(DraftJob.worker)) if w}
    finally:
        engine.dispose()


def run_config(
    name: str,
    workers: int,
    listeners: int,
    burst: list[WrittenStudy],
    warmups: list[WrittenStudy],
    work: Path,
    senders: int,
) -> dict[str, float | int]:
    db_name = f"medrega_bench_scale_{os.getpid()}_{name}"
    url = harness.scratch_database(db_name)
    os.environ["MEDREGA_DATABASE_URL"] = url
    prefix = f"bench{os.getpid()}{name}-"
    pacs_port, ris_port = free_port(), free_port()
    run_dir = work / name
    (run_dir / "pacs").mkdir(parents=True)
    pacs = subprocess.Popen(
        ["storescp", "--aetitle", "ORTHANC", "--output-directory", str(run_dir / "pacs"),
         str(pacs_port)],
        env={**os.environ, "TCP_NODELAY": "1"},
    )  # fmt: skip
    base_env = {
        "MEDREGA_DATABASE_URL": url,
        "MEDREGA_QUEUE_PREFIX": prefix,
        "MEDREGA_PACS_PORT": str(pacs_port),
        "MEDREGA_PACS_HTTP_URL": "http://127.0.0.1:1",
        "MEDREGA_RIS_PORT": str(ris_port),
    }
    token = secrets.token_urlsafe(32)
    per_node = [
        workers // listeners + (1 if i < workers % listeners else 0) for i in range(listeners)
    ]
    nodes: list[Node] = []
    try:
        with RisSink(run_dir / "ris", port=ris_port), ThreadPoolExecutor(max(2, senders)) as pool:
            futures = [
                pool.submit(
                    start_node,
                    f"node-{chr(97 + i)}",
                    run_dir / f"node-{chr(97 + i)}",
                    base_env,
                    token,
                    allowed_aes=(SENDER_AE,),
                    stable_age_s=1.0,
                    draft_workers=count,
                    delivery_threads=3 if i == 0 else 0,
                    relay=i == 0,
                )  # fmt: skip
                for i, count in enumerate(per_node)
            ]
            nodes = [f.result() for f in futures]
            factory = sessionmaker(create_engine(url))
            listeners_up = [n.listener for n in nodes if n.listener is not None]
            # Warm-up: every model worker loads its model on its first draft.
            for round_ in range(4):
                batch = warmups[round_ * 2 * workers : (round_ + 1) * 2 * workers]
                list(
                    pool.map(
                        lambda s: send(s, listeners_up[0].port, listeners_up[0].ae_title), batch
                    )
                )
                wait_delivered(factory, batch, 180.0)
                if len(_workers_that_drafted(url)) >= workers:
                    break
            cpu_before = cpu_seconds(_pids(nodes))
            started = time.monotonic()

            def send_round_robin(indexed: tuple[int, WrittenStudy]) -> None:
                target = listeners_up[indexed[0] % len(listeners_up)]
                send(indexed[1], target.port, target.ae_title)

            list(pool.map(send_round_robin, enumerate(burst)))
            rows: list[StudyTimes] = wait_delivered(factory, burst, 900.0)
            wall_s = time.monotonic() - started
            cpu_s = cpu_seconds(_pids(nodes)) - cpu_before
    finally:
        for node in nodes:
            node.stop()
        pacs.terminate()
        pacs.wait(timeout=10)
        delete_test_queues(prefix)
        harness.drop_database(db_name)
    span = (max(r.delivered for r in rows) - min(r.created for r in rows)).total_seconds()
    return {
        "workers": workers,
        "listeners": listeners,
        "sent": len(burst),
        "delivered": len(rows),
        "cxr_per_hour": round(len(rows) / span * 3600) if span > 0 else 0,
        "p50_s": round(percentile([r.latency_s for r in rows], 50), 2),
        "p95_s": round(percentile([r.latency_s for r in rows], 95), 2),
        "draft_p50_s": round(percentile([r.draft_s for r in rows], 50), 3),
        "wall_s": round(wall_s, 1),
        "cpu_s_per_study": round(cpu_s / max(1, len(rows)), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cxr", type=int, default=30)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--configs", default="1w_1l,2w_1l,1w_2l,2w_2l")
    args = parser.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for config in configs:
        if not (len(config) == 5 and config[0] in "12" and config[1:3] == "w_" and config[3] in "12"
                and config[4] == "l"):  # fmt: skip
            parser.error(f"unknown configuration {config!r} (e.g. 1w_1l, 2w_2l)")
    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="medrega-bench-scale-"))
    print(f"writing {args.cxr} + 16 chest X-rays …", file=sys.stderr, flush=True)
    burst = [write_phantom_study("cxr", s, work / "in") for s in seeds("test", args.cxr)]
    warmups = [
        write_phantom_study("cxr", s, work / "in") for s in seeds("test", 16, start=args.cxr)
    ]
    runs: dict[str, dict[str, float | int]] = {}
    for config in configs:
        print(f"{config} …", file=sys.stderr, flush=True)
        runs[config] = run_config(
            config, int(config[0]), int(config[3]), burst, warmups, work, args.senders
        )
        print(f"{config}: {json.dumps(runs[config])}", file=sys.stderr, flush=True)

    def metric(config: str, key: str) -> float | int | None:
        return runs[config][key] if config in runs else None

    one, two = metric("1w_1l", "cxr_per_hour"), metric("2w_1l", "cxr_per_hour")
    result = {
        "cxr_per_hour_1w": one,
        "cxr_per_hour_2w": two,
        "efficiency_2w": round(two / (2 * one), 2) if one and two else None,
        "cxr_per_hour_2l": metric("2w_2l", "cxr_per_hour"),
        "cxr_per_hour_1w_2l": metric("1w_2l", "cxr_per_hour"),
        "p95_s_1w": metric("1w_1l", "p95_s"),
        "p95_s_2w": metric("2w_1l", "p95_s"),
        "p95_s_2l": metric("2w_2l", "p95_s"),
        "cpu_s_per_study_1w": metric("1w_1l", "cpu_s_per_study"),
        "cpu_s_per_study_2w": metric("2w_1l", "cpu_s_per_study"),
        "cores": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "runs": runs,
    }
    print(json.dumps(result))
    return 0 if all(r["delivered"] == r["sent"] for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
