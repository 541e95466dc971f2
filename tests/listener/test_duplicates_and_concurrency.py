"""Duplicates are idempotent; concurrent associations (and processes) lose and double nothing."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import Engine, text

from tests.listener.conftest import (
    dataset_bytes,
    draft_jobs,
    rows,
    sha256_file,
    storescu,
    study_row,
    wait_for,
)
from tests.listener.ct_files import write_ct_study
from tests.support.listener_process import RunningListener, listener_process


def send_in_parallel(listener: RunningListener, batches: list[list[Path]]) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(batches)) as pool:
        results = list(pool.map(lambda files: storescu(listener, files), batches))
    for result in results:
        assert result.returncode == 0, result.stderr


def assert_one_row_per_instance(engine: Engine, listener: RunningListener, uids: list[str]) -> None:
    stored = rows(engine, "SELECT sop_instance_uid, file_path, sha256 FROM instances")
    assert sorted(r.sop_instance_uid for r in stored) == sorted(uids)
    for row in stored:
        assert sha256_file(listener.storage_dir / row.file_path) == row.sha256


def test_same_study_twice_in_parallel_gives_one_row_per_instance(
    listener: RunningListener, clean_db: Engine, tmp_path: Path
) -> None:
    study = write_ct_study(tmp_path / "in", count=40)
    quarters = [study.files[i::4] for i in range(4)]
    send_in_parallel(listener, quarters + quarters[::-1])  # 8 associations, each file twice

    assert_one_row_per_instance(clean_db, listener, study.sop_instance_uids)
    assert study_row(clean_db, study.study_uid).instance_count == 40
    assert wait_for(lambda: len(draft_jobs(clean_db, study.study_uid)) == 1)
    # Sending it all again later is a no-op: same bytes, no new input, no new job.
    assert storescu(listener, study.files).returncode == 0
    assert not study_row(clean_db, study.study_uid).needs_redraft
    assert len(draft_jobs(clean_db, study.study_uid)) == 1


def test_changed_content_under_same_uid_replaces_and_redrafts(
    listener: RunningListener, clean_db: Engine, tmp_path: Path
) -> None:
    study = write_ct_study(tmp_path / "in", count=3)
    assert storescu(listener, study.files).returncode == 0
    assert wait_for(lambda: len(draft_jobs(clean_db, study.study_uid)) == 1)
    with clean_db.begin() as connection:  # as if the worker had drafted it
        connection.execute(text("UPDATE draft_jobs SET state = 'done'"))
        connection.execute(text("UPDATE studies SET state = 'drafted'"))

    corrected = dcmread(study.files[0])
    corrected.PatientName = "Corrected^Name"  # e.g. a PACS-side demographic fix
    corrected_path = tmp_path / "corrected.dcm"
    corrected.save_as(corrected_path, enforce_file_format=True)
    assert storescu(listener, [corrected_path]).returncode == 0

    (row,) = rows(
        clean_db,
        "SELECT file_path, sha256 FROM instances WHERE sop_instance_uid = :uid",
        uid=study.sop_instance_uids[0],
    )
    on_disk = listener.storage_dir / row.file_path
    assert dataset_bytes(on_disk) == dataset_bytes(corrected_path)  # the newest copy is kept
    assert sha256_file(on_disk) == row.sha256
    assert study_row(clean_db, study.study_uid).needs_redraft
    # Same instance set, so the same job row is re-opened rather than duplicated.
    assert wait_for(lambda: [j.state for j in draft_jobs(clean_db, study.study_uid)] == ["pending"])
    (job,) = draft_jobs(clean_db, study.study_uid)
    assert job.reason == "instance content changed"


def test_several_processes_share_the_port(
    clean_db: Engine, storage_dir: Path, tmp_path: Path
) -> None:
    study = write_ct_study(tmp_path / "in", count=40)
    with listener_process(storage_dir=storage_dir, processes=2, stable_age_s=1.0) as listener:
        send_in_parallel(listener, [study.files[i::6] for i in range(6)])
        assert_one_row_per_instance(clean_db, listener, study.sop_instance_uids)
        assert wait_for(lambda: len(draft_jobs(clean_db, study.study_uid)) == 1)
        pids = {
            r.calling_ae_title
            for r in rows(clean_db, "SELECT DISTINCT calling_ae_title FROM instances")
        }
        assert pids == {"STORESCU"}
    assert listener.process.returncode == 0
