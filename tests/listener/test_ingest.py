"""storescu → listener → storage + Postgres → one draft job per instance set."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import Engine, text

from shared.config import REPO_ROOT
from shared.dicom.uids import derived_uid, new_uid
from tests.listener.conftest import (
    STABLE_AGE_S,
    audit_rows,
    dataset_bytes,
    draft_jobs,
    rows,
    sha256_file,
    storescu,
    study_row,
    wait_for,
)
from tests.listener.ct_files import TEST_UID_ROOT, write_ct_study
from tests.support.listener_process import RunningListener, listener_process

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def write_sr(path: Path, study_uid: str, sop_instance_uid: str, manufacturer: str) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(COMPREHENSIVE_SR)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = COMPREHENSIVE_SR
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid(prefix=TEST_UID_ROOT)
    ds.Modality = "SR"
    ds.Manufacturer = manufacturer
    ds.PatientName = "Phantom^Listener"
    ds.PatientID = "LST-0001"
    ds.ValueType = "CONTAINER"
    ds.CompletionFlag = "PARTIAL"
    ds.VerificationFlag = "UNVERIFIED"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_study_is_stored_indexed_and_drafted_once_then_redrafted_on_late_input(
    listener: RunningListener, clean_db: Engine, tmp_path: Path
) -> None:
    study = write_ct_study(tmp_path / "in", count=12)
    result = storescu(listener, study.files)
    assert result.returncode == 0, result.stderr

    # Every instance: on disk where the row says, with the row's sha256 and size, dataset bytes
    # exactly as sent.
    stored = rows(
        clean_db,
        "SELECT sop_instance_uid, file_path, size_bytes, sha256, transfer_syntax_uid "
        "FROM instances ORDER BY sop_instance_uid",
    )
    assert sorted(r.sop_instance_uid for r in stored) == sorted(study.sop_instance_uids)
    sent = {uid: path for uid, path in zip(study.sop_instance_uids, study.files, strict=True)}
    for row in stored:
        on_disk = listener.storage_dir / row.file_path
        assert row.file_path == f"{study.study_uid}/{study.series_uid}/{row.sop_instance_uid}.dcm"
        assert sha256_file(on_disk) == row.sha256
        assert on_disk.stat().st_size == row.size_bytes
        assert dataset_bytes(on_disk) == dataset_bytes(sent[row.sop_instance_uid])
        assert row.transfer_syntax_uid == ExplicitVRLittleEndian
    assert not list(listener.storage_dir.rglob("*.part"))  # no temp files left

    # Idle for STABLE_AGE → exactly one pending job, and still one a few sweeps later.
    assert wait_for(lambda: len(draft_jobs(clean_db, study.study_uid)) == 1, timeout_s=10)
    first_study = study_row(clean_db, study.study_uid)
    assert first_study.state == "stable" and first_study.instance_count == 12
    assert not first_study.needs_redraft
    (first_job,) = draft_jobs(clean_db, study.study_uid)
    assert first_job.state == "pending" and first_job.instance_count == 12

    # Our own SR coming back from the PACS: recorded as own output, changes nothing else.
    sr_files = [
        write_sr(tmp_path / "own_sr.dcm", study.study_uid, derived_uid("t", "1"), "Other"),
        write_sr(tmp_path / "own_sr2.dcm", study.study_uid, generate_uid(), "medrega-pacs"),
    ]
    result = storescu(listener, sr_files)
    assert result.returncode == 0, result.stderr
    own = rows(
        clean_db,
        "SELECT se.is_own_output FROM instances i JOIN series se ON se.id = i.series_id "
        "WHERE se.modality = 'SR'",
    )
    assert [r.is_own_output for r in own] == [True, True]
    after_sr = study_row(clean_db, study.study_uid)
    assert not after_sr.needs_redraft and after_sr.state == "stable"
    assert after_sr.last_received_at == first_study.last_received_at

    # A late instance: marked for re-draft at once, a second job (the first superseded) when idle.
    late = write_ct_study(
        tmp_path / "late",
        count=1,
        study_uid=study.study_uid,
        series_uid=study.series_uid,
        first_number=13,
    )
    result = storescu(listener, late.files)
    assert result.returncode == 0, result.stderr
    assert study_row(clean_db, study.study_uid).needs_redraft
    assert wait_for(lambda: len(draft_jobs(clean_db, study.study_uid)) == 2, timeout_s=10)
    first, second = draft_jobs(clean_db, study.study_uid)
    assert first.state == "superseded"
    assert second.state == "pending" and second.instance_count == 13  # SRs are not input
    assert not study_row(clean_db, study.study_uid).needs_redraft

    # Only our SRs arrive a while later: still two jobs.
    storescu(
        listener,
        [write_sr(tmp_path / "own_sr3.dcm", study.study_uid, new_uid(), "medrega-pacs")],
    )
    wait_for(lambda: False, timeout_s=STABLE_AGE_S * 2.5)
    assert len(draft_jobs(clean_db, study.study_uid)) == 2


def test_signed_study_records_late_instances_flags_them_without_redraft(
    listener: RunningListener, clean_db: Engine, tmp_path: Path
) -> None:
    study = write_ct_study(tmp_path / "in", count=3)
    assert storescu(listener, study.files).returncode == 0
    assert wait_for(lambda: len(draft_jobs(clean_db, study.study_uid)) == 1)
    with clean_db.begin() as connection:  # what the web UI does when a radiologist signs
        connection.execute(text("UPDATE studies SET state = 'signed'"))
        connection.execute(text("UPDATE draft_jobs SET state = 'done'"))

    late = write_ct_study(
        tmp_path / "late", count=2, study_uid=study.study_uid, series_uid=study.series_uid
    )
    assert storescu(listener, late.files).returncode == 0
    after = study_row(clean_db, study.study_uid)
    assert after.instance_count == 5 and after.state == "signed" and not after.needs_redraft
    assert after.new_images_after_signoff
    (audit,) = audit_rows(clean_db, "new_images_after_signoff")
    assert (audit.object_type, audit.study_id) == ("study", after.id)

    # More images while the flag is up: recorded, no second audit row, still no draft.
    more = write_ct_study(
        tmp_path / "more", count=1, study_uid=study.study_uid, series_uid=study.series_uid
    )
    assert storescu(listener, more.files).returncode == 0
    assert study_row(clean_db, study.study_uid).instance_count == 6
    assert len(audit_rows(clean_db, "new_images_after_signoff")) == 1
    wait_for(lambda: False, timeout_s=STABLE_AGE_S * 2.5)
    assert [j.state for j in draft_jobs(clean_db, study.study_uid)] == ["done"]


def sign_report(engine: Engine, study_uid: str) -> None:
    """A signed report version, as shared/reports writes it, for a study the listener holds."""
    with engine.begin() as connection:
        user_id = connection.execute(
            text(
                "INSERT INTO users (username, password_hash, full_name, role, active, created_at) "
                "VALUES ('rad', 'x', 'Rad', 'radiologist', true, now()) RETURNING id"
            )
        ).scalar_one()
        connection.execute(
            text(
                "INSERT INTO reports (study_id, version, status, findings_en, findings_zh, "
                "impression_en, impression_zh, sentences, signed_at, signed_by_user_id, "
                "author_user_id, created_at) "
                "SELECT id, 1, 'signed', '', '', 'Normal.', '', '[]', now(), :user, :user, now() "
                "FROM studies WHERE study_instance_uid = :uid"
            ),
            {"user": user_id, "uid": study_uid},
        )


def test_study_with_a_signed_report_is_never_redrafted_whatever_its_state(
    listener: RunningListener, clean_db: Engine, tmp_path: Path
) -> None:
    """The signed report, not the study's state column, is what makes a study final."""
    study = write_ct_study(tmp_path / "in", count=2)
    assert storescu(listener, study.files).returncode == 0
    assert wait_for(lambda: len(draft_jobs(clean_db, study.study_uid)) == 1)
    sign_report(clean_db, study.study_uid)
    with clean_db.begin() as connection:  # e.g. a state another component set later
        connection.execute(text("UPDATE studies SET state = 'drafted'"))
        connection.execute(text("UPDATE draft_jobs SET state = 'done'"))

    late = write_ct_study(
        tmp_path / "late", count=1, study_uid=study.study_uid, series_uid=study.series_uid
    )
    assert storescu(listener, late.files).returncode == 0
    after = study_row(clean_db, study.study_uid)
    assert after.new_images_after_signoff and not after.needs_redraft
    assert len(audit_rows(clean_db, "new_images_after_signoff")) == 1
    # Even marked for re-draft (by a bug, or a second writer), the sweep leaves it alone.
    with clean_db.begin() as connection:
        connection.execute(text("UPDATE studies SET needs_redraft = true"))
    wait_for(lambda: False, timeout_s=STABLE_AGE_S * 2.5)
    assert [j.state for j in draft_jobs(clean_db, study.study_uid)] == ["done"]


def test_sr_only_study_never_gets_a_job(
    listener: RunningListener, clean_db: Engine, tmp_path: Path
) -> None:
    study_uid = generate_uid(prefix=TEST_UID_ROOT)
    sr = write_sr(tmp_path / "sr.dcm", study_uid, new_uid(), "medrega-pacs")
    assert storescu(listener, [sr]).returncode == 0
    assert study_row(clean_db, study_uid) is not None
    wait_for(lambda: False, timeout_s=STABLE_AGE_S * 2.5)
    assert draft_jobs(clean_db, study_uid) == []


def test_stability_sweep_cli_once(clean_db: Engine, storage_dir: Path, tmp_path: Path) -> None:
    """`python -m services.listener.study_stability --once` (operators, scripts)."""
    study = write_ct_study(tmp_path / "in", count=2)
    with listener_process(storage_dir=storage_dir, stable_age_s=3600) as listener:
        assert storescu(listener, study.files).returncode == 0
    assert draft_jobs(clean_db, study.study_uid) == []
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.listener.study_stability",
            "--once",
            "--stable-age-s",
            "0",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "1 draft job(s) created" in result.stdout
    assert [j.state for j in draft_jobs(clean_db, study.study_uid)] == ["pending"]
