"""What the end-to-end benchmarks share: a scratch database, and sending files with storescu.

Every benchmark runs against its own PostgreSQL database (created, migrated with Alembic to
head, dropped afterwards), never the developer's stack or a test run.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config

from shared.config import REPO_ROOT

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def scratch_database(name: str) -> str:
    """(Re)create database `name`, migrate it to head; the SQLAlchemy URL."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    cfg = Config(str(REPO_ROOT / "alembic.ini"))
    cfg.attributes["url"] = url
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")
    return url


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def libpq_dsn(url: str) -> str:
    """The psycopg (libpq) form of a SQLAlchemy URL."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def storescu(
    files: list[Path],
    port: int,
    called_ae: str,
    *,
    calling_ae: str = "STORESCU",
    timeout_s: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """DCMTK storescu to 127.0.0.1:`port`, as a modality sends (raises CalledProcessError)."""
    return subprocess.run(
        ["storescu", "-aet", calling_ae, "-aec", called_ae, "127.0.0.1", str(port)]
        + [str(f) for f in files],
        check=True, capture_output=True, env={**os.environ, "TCP_NODELAY": "1"},
        timeout=timeout_s,
    )  # fmt: skip
