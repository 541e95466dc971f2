"""The Alembic migrations and the SQLAlchemy models describe the same schema."""

from __future__ import annotations

import psycopg
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from shared.db.models import Base
from tests.conftest import PG_ADMIN_DSN, _sqlalchemy_url, alembic_config


def test_models_match_migrations(engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"


def test_upgrade_downgrade_round_trip() -> None:
    name = "medrega_test_roundtrip"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _sqlalchemy_url(name)
    cfg = alembic_config(url)
    eng = create_engine(url)
    try:
        command.upgrade(cfg, "head")
        assert set(Base.metadata.tables) <= set(inspect(eng).get_table_names())
        command.downgrade(cfg, "base")
        assert inspect(eng).get_table_names() == ["alembic_version"]
        command.upgrade(cfg, "head")
    finally:
        eng.dispose()
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
