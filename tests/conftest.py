"""Fixtures shared by every test: a real PostgreSQL database, migrated with Alembic.

Each pytest run gets its own database (`medrega_test_<pid>`), dropped at the end, so parallel
runs and a developer's running stack never see each other's rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from shared.config import REPO_ROOT, get_settings
from shared.db.models import Base

PG_ADMIN_DSN = os.environ.get(
    "MEDREGA_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TEST_DB_NAME = f"medrega_test_{os.getpid()}"


def _sqlalchemy_url(dbname: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{dbname}"


def alembic_config(url: str) -> Config:
    cfg = Config(str(REPO_ROOT / "alembic.ini"))
    cfg.attributes["url"] = url
    cfg.attributes["configure_logger"] = False
    return cfg


@pytest.fixture(scope="session")
def db_url() -> Iterator[str]:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEST_DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{TEST_DB_NAME}"')
    url = _sqlalchemy_url(TEST_DB_NAME)
    command.upgrade(alembic_config(url), "head")
    # Anything that reads settings (services started in-process or as subprocesses) uses it.
    os.environ["MEDREGA_DATABASE_URL"] = url
    os.environ.setdefault("MEDREGA_ENVIRONMENT", "test")
    get_settings.cache_clear()
    yield url
    from shared.db.session import get_engine

    get_engine.cache_clear()
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEST_DB_NAME}" WITH (FORCE)')


@pytest.fixture(scope="session")
def engine(db_url: str) -> Iterator[Engine]:
    eng = create_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def clean_db(engine: Engine) -> Engine:
    """Empty every table before the test (the schema stays)."""
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    return engine


@pytest.fixture
def db_session(clean_db: Engine) -> Iterator[Session]:
    session = sessionmaker(clean_db, expire_on_commit=False)()
    yield session
    session.close()


@pytest.fixture
def storage_dir(tmp_path: Path) -> Path:
    path = tmp_path / "storage"
    path.mkdir()
    return path
