"""`ops/stack.sh` stops when the database migration fails: nothing starts on the old schema."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from shared.config import REPO_ROOT
from tests.conftest import PG_ADMIN_DSN, _sqlalchemy_url


@pytest.fixture
def broken_database() -> Iterator[str]:
    """A database whose schema is at a revision no migration knows (as after a bad upgrade)."""
    name = f"medrega_broken_{os.getpid()}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}", autocommit=True) as db:
        db.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        db.execute("INSERT INTO alembic_version VALUES ('no_such_revision')")
    yield name
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_failed_migration_stops_the_stack_with_an_error(
    broken_database: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "MEDREGA_DB_NAME": broken_database,
        "MEDREGA_DATABASE_URL": _sqlalchemy_url(broken_database),
        "MEDREGA_RUN_DIR": str(tmp_path),
    }
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "ops" / "stack.sh"), "infra", "--no-install"],
        env=env, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "no_such_revision" in result.stderr  # alembic's own reason is shown
    assert "[stack] database migration failed (alembic exit" in result.stderr
    assert "nothing started" in result.stderr
