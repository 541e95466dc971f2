"""Fixtures and helpers for listener tests: a real listener subprocess, real DCMTK, real Postgres."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import Engine, text

from tests.support.listener_process import RunningListener, listener_process

STABLE_AGE_S = 1.0


@pytest.fixture
def listener(clean_db: Engine, storage_dir: Path) -> Iterator[RunningListener]:
    with listener_process(storage_dir=storage_dir, stable_age_s=STABLE_AGE_S) as running:
        yield running


def storescu(
    listener: RunningListener,
    files: Sequence[Path],
    calling_ae: str = "STORESCU",
    extra_args: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu with TCP_NODELAY=1 (without it DCMTK crawls on loopback)."""
    return subprocess.run(
        [
            "storescu",
            "-aet",
            calling_ae,
            "-aec",
            listener.ae_title,
            *extra_args,
            listener.host,
            str(listener.port),
            *map(str, files),
        ],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def c_store(
    listener: RunningListener, files: Sequence[Path], calling_ae: str = "MEDREGA_TEST"
) -> list[int]:
    """CT files over one pynetdicom association; the DIMSE status of each C-STORE."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    association = ae.associate(listener.host, listener.port, ae_title=listener.ae_title)
    assert association.is_established
    try:
        statuses = []
        for path in files:
            status = association.send_c_store(path)
            assert status, "no response"
            statuses.append(int(status.Status))
        return statuses
    finally:
        association.release()


def rows(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(text(sql), params).all())


def wait_for(
    condition: Callable[[], bool], timeout_s: float = 10.0, interval_s: float = 0.1
) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return condition()


def draft_jobs(engine: Engine, study_uid: str) -> list[Any]:
    return rows(
        engine,
        "SELECT j.id, j.state, j.instance_count, j.instance_set_sha256, j.reason "
        "FROM draft_jobs j JOIN studies s ON s.id = j.study_id "
        "WHERE s.study_instance_uid = :uid ORDER BY j.id",
        uid=study_uid,
    )


def study_row(engine: Engine, study_uid: str) -> Any:
    found = rows(
        engine,
        "SELECT id, state, needs_redraft, instance_count, last_received_at, "
        "new_images_after_signoff, conflicting_instances "
        "FROM studies WHERE study_instance_uid = :uid",
        uid=study_uid,
    )
    return found[0] if found else None


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset after the file meta: what the sender sent, byte for byte."""
    with path.open("rb") as handle:
        read_preamble(handle, False)
        _read_file_meta_info(handle)
        return handle.read()


def audit_rows(engine: Engine, action: str) -> list[Any]:
    return rows(
        engine,
        "SELECT object_type, object_id, study_id, details FROM audit_log WHERE action = :action "
        "ORDER BY id",
        action=action,
    )
