"""Duplicates are idempotent, different copies all kept; concurrent associations (and processes)
lose and double nothing."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from tests.listener.conftest import (
    audit_rows,
    c_store,
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


def corrected_copy(source: Path, target: Path, patient_name: str) -> Path:
    """`source` with other content under the same SOP Instance UID (e.g. a PACS-side fix)."""
    corrected = dcmread(source)
    corrected.PatientName = patient_name
    corrected.save_as(target, enforce_file_format=True)
    return target


def test_changed_content_under_same_uid_keeps_the_first_copy_and_stores_the_new_beside(
    listener: RunningListener, clean_db: Engine, tmp_path: Path
) -> None:
    study = write_ct_study(tmp_path / "in", count=3)
    assert storescu(listener, study.files).returncode == 0
    assert wait_for(lambda: len(draft_jobs(clean_db, study.study_uid)) == 1)
    with clean_db.begin() as connection:  # drafted and signed: reports reference the first copy
        connection.execute(text("UPDATE draft_jobs SET state = 'done'"))
        connection.execute(text("UPDATE studies SET state = 'signed'"))
    uid = study.sop_instance_uids[0]
    instance_sql = (
        "SELECT id, file_path, size_bytes, sha256, transfer_syntax_uid FROM instances "
        "WHERE sop_instance_uid = :uid"
    )
    (first,) = rows(clean_db, instance_sql, uid=uid)
    first_path = listener.storage_dir / first.file_path
    first_bytes = first_path.read_bytes()

    corrected = corrected_copy(study.files[0], tmp_path / "corrected.dcm", "Corrected^Name")
    assert c_store(listener, [corrected]) == [0x0000]  # the copy is durable: success

    # The first copy stands: its row and its file, byte for byte.
    assert rows(clean_db, instance_sql, uid=uid) == [first]
    assert first_path.read_bytes() == first_bytes
    assert sha256_file(first_path) == first.sha256
    # The new copy is beside it, durable and recorded.
    (copy,) = rows(
        clean_db,
        "SELECT instance_id, file_path, size_bytes, sha256, transfer_syntax_uid, "
        "calling_ae_title FROM instance_copies",
    )
    copy_path = listener.storage_dir / copy.file_path
    assert copy.instance_id == first.id and copy.sha256 != first.sha256
    assert copy.file_path == f"{study.study_uid}/{study.series_uid}/{uid}.{copy.sha256[:16]}.dcm"
    assert sha256_file(copy_path) == copy.sha256 and copy_path.stat().st_size == copy.size_bytes
    assert dataset_bytes(copy_path) == dataset_bytes(corrected)
    assert copy.calling_ae_title == "MEDREGA_TEST"
    # Flagged and audited (digests only, no PHI); no re-draft: the draft is of the first copy.
    after = study_row(clean_db, study.study_uid)
    assert after.conflicting_instances and not after.needs_redraft and after.state == "signed"
    (audit,) = audit_rows(clean_db, "instance_conflict")
    assert (audit.object_type, audit.object_id, audit.study_id) == ("instance", uid, after.id)
    assert audit.details["first_sha256"] == first.sha256
    assert audit.details["copy_sha256"] == copy.sha256
    assert "Corrected" not in str(audit.details)

    # The same second copy again (the sender retrying) and the first again: idempotent.
    assert c_store(listener, [corrected, study.files[0]]) == [0x0000, 0x0000]
    assert len(rows(clean_db, "SELECT id FROM instance_copies")) == 1
    assert len(audit_rows(clean_db, "instance_conflict")) == 1
    assert first_path.read_bytes() == first_bytes
    assert len(list(first_path.parent.glob("*.dcm"))) == 4
    assert not list(listener.storage_dir.rglob("*.part"))
    wait_for(lambda: False, timeout_s=2.5)
    assert [j.state for j in draft_jobs(clean_db, study.study_uid)] == ["done"]


def test_different_copies_at_once_are_all_kept(
    listener: RunningListener, clean_db: Engine, tmp_path: Path
) -> None:
    """Several associations race with different bytes under one SOP Instance UID: whichever is
    first stays the instance, every other copy is kept beside it, no file is ever replaced."""
    study = write_ct_study(tmp_path / "in", count=1)
    variants = [study.files[0]] + [
        corrected_copy(study.files[0], tmp_path / f"v{n}.dcm", f"Variant^{n}") for n in range(3)
    ]
    send_in_parallel(listener, [[variant] for variant in variants] * 2)

    (instance,) = rows(clean_db, "SELECT id, file_path, sha256 FROM instances")
    copies = rows(clean_db, "SELECT instance_id, file_path, sha256 FROM instance_copies")
    recorded = [(instance.file_path, instance.sha256)] + [(c.file_path, c.sha256) for c in copies]
    assert {c.instance_id for c in copies} == {instance.id}
    for file_path, sha in recorded:
        assert sha256_file(listener.storage_dir / file_path) == sha
    kept = sorted(dataset_bytes(listener.storage_dir / file_path) for file_path, _ in recorded)
    assert kept == sorted(dataset_bytes(v) for v in variants)
    assert len(list(listener.storage_dir.glob("*/*/*.dcm"))) == 4
    assert len(audit_rows(clean_db, "instance_conflict")) == 3
    assert study_row(clean_db, study.study_uid).conflicting_instances


def test_database_refuses_to_change_an_instances_stored_bytes(
    listener: RunningListener, clean_db: Engine, tmp_path: Path
) -> None:
    """The guard behind the indexer: whatever the code does, a recorded instance's bytes (and a
    kept copy) never change in the database."""
    study = write_ct_study(tmp_path / "in", count=1)
    assert storescu(listener, study.files).returncode == 0
    corrected = corrected_copy(study.files[0], tmp_path / "corrected.dcm", "Corrected^Name")
    assert c_store(listener, [corrected]) == [0x0000]
    for statement in (
        "UPDATE instances SET sha256 = repeat('0', 64)",
        "UPDATE instances SET file_path = 'elsewhere.dcm'",
        "UPDATE instances SET size_bytes = size_bytes + 1",
        "UPDATE instance_copies SET file_path = 'elsewhere.dcm'",
    ):
        with pytest.raises(IntegrityError, match="never replaced|immutable"):
            with clean_db.begin() as connection:
                connection.execute(text(statement))
    with clean_db.begin() as connection:  # what is not the stored bytes may still change
        connection.execute(text("UPDATE instances SET instance_number = 7"))


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
