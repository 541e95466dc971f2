"""ops/backup.sh backs up the database and the storage, and restores both into a fresh database
and an empty storage directory with every row and file as it was."""

from __future__ import annotations

import hashlib
import os
import subprocess
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
