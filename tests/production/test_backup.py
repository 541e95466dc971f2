"""ops/backup.sh backs up the database and the storage, and restores both into a fresh database
and an empty storage directory with every row and file as it was."""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from shared.config import REPO_ROOT
from tests.conftest import PG_ADMIN_DSN, TEST_DB_NAME, _sqlalchemy_url
from tests.web.factories import make_drafted_study

BACKUP = REPO_ROOT / "ops" / "backup.sh"
RESTORE_DB = f"{TEST_DB_NAME}_restore"
TABLES = ("studies", "series", "instances", "reports", "region_findings", "draft_jobs")


@pytest.fixture
def restore_url() -> Iterator[str]:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{RESTORE_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{RESTORE_DB}"')
    yield _sqlalchemy_url(RESTORE_DB)
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{RESTORE_DB}" WITH (FORCE)')


def _run(command: str, arg: Path, database_url: str, storage: Path) -> str:
    env = {**os.environ, "MEDREGA_DATABASE_URL": database_url, "MEDREGA_STORAGE_DIR": str(storage)}
    result = subprocess.run(
        [str(BACKUP), command, str(arg)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _snapshot(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    with engine.connect() as conn:
        return {
            table: [tuple(row) for row in conn.execute(text(f"SELECT * FROM {table} ORDER BY id"))]
            for table in TABLES
        }


def test_backup_then_restore_into_a_fresh_database_and_storage(
    clean_db: Engine, db_url: str, restore_url: str, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    with Session(clean_db) as session:
        for seed in (1, 2):
            make_drafted_study(session, storage, tmp_path / "work", seed=seed)
        session.commit()
    before = _snapshot(clean_db)
    assert len(before["instances"]) >= 2

    backup_dir = Path(_run("backup", tmp_path / "backups", db_url, storage))
    assert sorted(p.name for p in backup_dir.iterdir()) == [
        "SHA256SUMS", "database.dump", "storage.tar",
    ]  # fmt: skip
    assert oct(backup_dir.stat().st_mode & 0o777) == "0o700"

    restored_storage = tmp_path / "restored-storage"
    _run("restore", backup_dir, restore_url, restored_storage)
    restored = create_engine(restore_url)
    try:
        assert _snapshot(restored) == before
        with restored.connect() as conn:
            rows = conn.execute(text("SELECT file_path, sha256 FROM instances")).all()
        for row in rows:
            data = (restored_storage / row.file_path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == row.sha256
    finally:
        restored.dispose()

    # A restore that fails halfway leaves the live database as it was, not half dropped: here a
    # view a site added on `reports` makes --clean's DROP TABLE fail.
    restored = create_engine(restore_url)
    try:
        with restored.begin() as conn:
            conn.execute(text("CREATE VIEW site_report_counts AS "
                              "SELECT study_id, count(*) AS n FROM reports GROUP BY study_id"))  # fmt: skip
        live = _snapshot(restored)
        env = {**os.environ, "MEDREGA_DATABASE_URL": restore_url,
               "MEDREGA_STORAGE_DIR": str(tmp_path / "empty-storage")}  # fmt: skip
        failed = subprocess.run(
            [str(BACKUP), "restore", str(backup_dir)], env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert failed.returncode != 0 and "depend" in failed.stderr, failed.stderr
        assert _snapshot(restored) == live
        with restored.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM site_report_counts")).scalar()
    finally:
        restored.dispose()

    # A damaged backup is refused before anything is touched.
    with (backup_dir / "storage.tar").open("r+b") as handle:
        handle.seek(600)
        handle.write(b"\xff")
    env = {**os.environ, "MEDREGA_DATABASE_URL": restore_url,
           "MEDREGA_STORAGE_DIR": str(tmp_path / "other")}  # fmt: skip
    damaged = subprocess.run(
        [str(BACKUP), "restore", str(backup_dir)], env=env, capture_output=True, text=True
    )
    assert damaged.returncode != 0 and "damaged" in damaged.stderr
    assert not (tmp_path / "other").exists()


def test_a_backup_taken_while_images_arrive_and_go_succeeds_with_every_dumped_file(
    clean_db: Engine, db_url: str, tmp_path: Path
) -> None:
    """The listener writes (and retention deletes) while a nightly backup runs. GNU tar says
    "file changed as we read it" / "removed before we read it" then, with exit status 1; the
    backup must not die of it, and every file the dump's rows name is in the archive."""
    storage = tmp_path / "storage"
    with Session(clean_db) as session:
        make_drafted_study(session, storage, tmp_path / "work", seed=1)
        session.commit()
    with clean_db.connect() as conn:
        dumped = {row.file_path for row in conn.execute(text("SELECT file_path FROM instances"))}
    # Other studies' series, whose directories keep gaining and losing images during the run.
    busy = [storage / f"1.2.826.0.1.9{i}" / "1.2.3" for i in range(20)]
    for directory in busy:
        directory.mkdir(parents=True)
        for k in range(100):
            (directory / f"{k}.dcm").write_bytes(b"DICM" * 64)
    stop = threading.Event()

    def arrive_and_go() -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            path = busy[i % len(busy)] / f"arriving-{i % 50}.dcm"
            path.write_bytes(b"DICM")
            path.unlink()

    churn = threading.Thread(target=arrive_and_go)
    churn.start()
    try:
        backup_dir = Path(_run("backup", tmp_path / "backups", db_url, storage))
    finally:
        stop.set()
        churn.join()
    with tarfile.open(backup_dir / "storage.tar") as archive:
        names = {name.removeprefix("./") for name in archive.getnames()}
    assert dumped <= names
    assert all(f"{d.relative_to(storage)}/99.dcm" in names for d in busy)
