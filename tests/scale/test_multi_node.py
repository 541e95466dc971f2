"""Two nodes on one machine, no shared disk: each with its own storage folder, listener, file
endpoint, model worker, delivery worker and relay; one PostgreSQL, one RabbitMQ, one PACS
(DCMTK storescp) and one RIS (MLLP sink).

Studies are sent to either node and drafted once by whichever model worker is free; node A's
model worker is SIGKILLed during the burst, so node B's worker drafts node A's studies by
fetching their pixels from node A's file endpoint. Everything is still drafted once and every
message reaches the PACS and the RIS exactly once.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from model.phantoms.__main__ import write_phantom_study
from model.phantoms.dicom_writer import WrittenStudy
from model.phantoms.splits import seeds
from ops.bench.harness import storescu
from ops.ris_sink import RisSink
from shared.db.models import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    DraftJob,
    DraftJobState,
    Instance,
    Report,
    Study,
)
from shared.reports.message_ids import sr_uids
from tests.scale.nodes import Node, start_node
from tests.support.listener_process import free_port
from tests.support.worker_process import delete_test_queues, queue_prefix
from tests.worker.conftest import wait_for

SENDER_AE = "MEDREGA_TEST"
TIMEOUT_S = 150.0


def _wait(predicate, timeout_s: float, what: str, nodes: list[Node]):  # type: ignore[no-untyped-def]
    """`wait_for`, with every node's logs in the failure."""
    try:
        return wait_for(predicate, timeout_s, what)
    except AssertionError as exc:
        logs = "\n".join(
            f"--- {p}\n{p.read_text(errors='replace')[-3000:]}"
            for node in nodes
            for p in sorted(node.work.glob("*.log"))
        )
        raise AssertionError(f"{exc}\n{logs}") from None


def _worker_name(node: Node) -> str:
    return f"{os.uname().nodename}:{node.draft_workers[0].process.pid}"


def _all_delivered(engine: Engine, count: int) -> bool:
    with Session(engine) as session:
        reports = session.scalar(select(func.count()).select_from(Report)) or 0
        states = Counter(session.scalars(select(Delivery.state)))
    return reports >= count and set(states) == {DeliveryState.DELIVERED}


def test_two_nodes_draft_each_study_once_and_survive_a_killed_model_worker(
    clean_db: Engine, tmp_path: Path
) -> None:
    token = secrets.token_urlsafe(32)
    prefix = queue_prefix()
    pacs_port, ris_port = free_port(), free_port()
    received = tmp_path / "pacs-received"
    received.mkdir()
    base_env = {
        "MEDREGA_QUEUE_PREFIX": prefix,
        "MEDREGA_PACS_PORT": str(pacs_port),
        "MEDREGA_PACS_HTTP_URL": "http://127.0.0.1:1",
        "MEDREGA_RIS_PORT": str(ris_port),
        "MEDREGA_RIS_TIMEOUT_S": "5",
        "MEDREGA_INSTANCE_CACHE_MAX_BYTES": str(256 * 1024 * 1024),
    }
    # Eight chest X-rays and one small CT, written while the nodes start.
    studies: list[WrittenStudy] = [
        write_phantom_study("cxr", seed, tmp_path / "in", max_side=256) for seed in seeds("test", 8)
    ]
    studies.append(
        write_phantom_study(
            "chest_ct", seeds("test", 1, start=8)[0], tmp_path / "in", n_slices=12, max_side=128
        )
    )
    pacs = subprocess.Popen(
        ["storescp", "--aetitle", "ORTHANC", "+uf", "--output-directory", str(received),
         str(pacs_port)],
        env={**os.environ, "TCP_NODELAY": "1"},
    )  # fmt: skip
    nodes: list[Node] = []
    try:
        with RisSink(tmp_path / "ris", port=ris_port) as sink, ThreadPoolExecutor(2) as pool:
            futures = [
                pool.submit(
                    start_node,
                    name,
                    tmp_path / name,
                    base_env,
                    token,
                    allowed_aes=(SENDER_AE,),
                    stable_age_s=1.0,
                )  # fmt: skip
                for name in ("node-a", "node-b")
            ]
            nodes = [f.result() for f in futures]
            node_a, node_b = nodes
            a_name, b_name = _worker_name(node_a), _worker_name(node_b)

            # The burst: the CT and every other X-ray to node A, the rest to node B.
            to_a = [studies[-1], *studies[0:8:2]]
            to_b = studies[1:8:2]

            def send(node: Node, batch: list[WrittenStudy]) -> None:
                assert node.listener is not None
                for study in batch:
                    storescu(study.files, node.listener.port, node.listener.ae_title,
                             calling_ae=SENDER_AE)  # fmt: skip

            sending = [pool.submit(send, node_a, to_a), pool.submit(send, node_b, to_b)]

            def a_has_a_job() -> bool:
                with Session(clean_db) as session:
                    return bool(
                        session.scalar(select(DraftJob.id).where(DraftJob.worker == a_name))
                    )

            # Node A's model worker dies as soon as it has taken a job (often mid-draft).
            _wait(a_has_a_job, TIMEOUT_S, "node A's model worker to take a job", nodes)
            node_a.draft_workers[0].kill()
            for future in sending:
                future.result()
            _wait(
                lambda: _all_delivered(clean_db, len(studies)),
                TIMEOUT_S,
                "every study drafted and delivered",
                nodes,
            )
            ris_received = sink.received
    finally:
        pacs.terminate()
        pacs.wait(timeout=10)
        for node in nodes:
            node.stop()
        delete_test_queues(prefix)

    with Session(clean_db) as session:
        # Each instance row names the node whose listener stored it, and the file is there only.
        for node, batch in ((node_a, to_a), (node_b, to_b)):
            for study in batch:
                rows = session.scalars(
                    select(Instance)
                    .join(Study)
                    .where(Study.study_instance_uid == study.study_instance_uid)
                ).all()
                assert len(rows) == len(study.files)
                for row in rows:
                    assert row.storage_node == node.name
                    assert (node.storage_dir / row.file_path).is_file()
                    other = node_b if node is node_a else node_a
                    assert not (other.storage_dir / row.file_path).exists()

        # Drafted once per study: one done job, one report version.
        jobs = session.scalars(select(DraftJob)).all()
        assert Counter(j.study_id for j in jobs if j.state == DraftJobState.DONE) == Counter(
            {s: 1 for s in {j.study_id for j in jobs}}
        )
        assert len({j.study_id for j in jobs}) == len(studies)
        reports = session.scalars(select(Report)).all()
        assert len(reports) == len(studies) and {r.version for r in reports} == {1}

        # Node B's worker drafted studies node A stored, reading A's pixels through A's endpoint.
        a_study_ids = set(
            session.scalars(select(Instance.study_id).where(Instance.storage_node == "node-a"))
        )
        by_b = {j.study_id for j in jobs if j.state == DraftJobState.DONE and j.worker == b_name}
        assert by_b & a_study_ids, "node B drafted none of node A's studies"
        assert any(node_b.cache_dir.rglob("*.dcm")), "node B fetched nothing"
        assert not any(node_b.storage_dir.rglob("*.dcm")) or by_b - a_study_ids

        # Exactly once at the receivers: every HL7 message once; every DICOM object once.
        deliveries = session.scalars(select(Delivery)).all()
        hl7 = [d for d in deliveries if d.kind == DeliveryKind.HL7]
        assert ris_received == len(hl7) == len(list((tmp_path / "ris").glob("*.hl7")))
        sr_expected = {
            sr_uids(d.report_id, d.report_version).sop_instance_uid
            for d in deliveries
            if d.kind == DeliveryKind.SR
        }
        stored_uids = [
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in received.iterdir()
            if p.is_file()
        ]
        assert len(stored_uids) == len(set(stored_uids)), "the PACS received an object twice"
        assert sr_expected <= set(stored_uids) and len(sr_expected) == len(studies)
