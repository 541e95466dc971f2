"""A draft worker on one node drafts a study whose files another node stored: it waits (durable
backoff) while that node's file endpoint is unreachable, and drafts from the fetched, verified
copies once it answers — in-process worker code, a real file endpoint process."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from model.phantoms.__main__ import write_phantom_study
from services.listener.file_server import register_node
from services.worker.drafting import run_draft_job
from shared.config import get_settings
from shared.db.models import DraftJob, DraftJobState
from shared.inference.onnx_backend import OnnxBackend
from shared.storage.instance_reader import instance_reader
from tests.scale.nodes import node_env, start_file_server
from tests.support.listener_process import free_port
from tests.support.study_rows import draft_job_for, index_files


@pytest.fixture
def on_node_b(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This test process is node B's worker (settings read afresh, and again after)."""
    token = secrets.token_urlsafe(32)
    monkeypatch.setenv("MEDREGA_NODE_NAME", "node-b")
    monkeypatch.setenv("MEDREGA_NODE_READ_TOKEN", token)
    monkeypatch.setenv("MEDREGA_INSTANCE_CACHE_DIR", str(tmp_path / "b" / "instance-cache"))
    get_settings.cache_clear()
    instance_reader.cache_clear()
    yield token
    monkeypatch.undo()
    get_settings.cache_clear()
    instance_reader.cache_clear()


def test_a_draft_waits_for_the_images_node_then_drafts_from_its_files(
    clean_db: Engine, tmp_path: Path, on_node_b: str
) -> None:
    written = write_phantom_study("cxr", 33, tmp_path / "in", max_side=256)
    a_env = {**os.environ, **node_env("node-a", tmp_path / "a", {}, on_node_b)}
    factory = sessionmaker(clean_db, expire_on_commit=False)
    with factory.begin() as session:
        # Rows as node A's listener writes them, files in A's folder.
        study = index_files(
            session, Path(a_env["MEDREGA_STORAGE_DIR"]), written.files, storage_node="node-a"
        )
        job = draft_job_for(session, study)
    # Node A registered once, and is down now (nothing listens at its address).
    register_node(clean_db, "node-a", f"http://127.0.0.1:{free_port()}")
    backend = OnnxBackend(get_settings().model_path)
    b_storage = tmp_path / "b" / "storage"

    waiting = run_draft_job(clean_db, job.id, backend, b_storage)
    with factory() as session:
        row = session.get(DraftJob, job.id)
        assert row is not None and waiting.state == DraftJobState.PENDING == row.state
        assert row.reason is not None
        assert row.reason.startswith("waiting for the images' storage node (attempt 1 of")
        assert "unreachable" in row.reason and row.next_attempt_at is not None

    server = start_file_server(a_env, tmp_path / "file-server.log")  # node A is back
    try:
        drafted = run_draft_job(clean_db, job.id, backend, b_storage)
    finally:
        server.stop()
    assert drafted.state == DraftJobState.DONE and drafted.report_id is not None
    cached = list((tmp_path / "b" / "instance-cache").rglob("*.dcm"))
    assert sorted(p.read_bytes() for p in cached) == sorted(f.read_bytes() for f in written.files)
    assert not b_storage.exists()  # node B stored nothing of its own
    with factory() as session:
        done = session.get(DraftJob, job.id)
        assert done is not None and done.attempts == 2 and "fetch_ms" in (done.timings or {})
