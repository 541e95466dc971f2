"""What the end-to-end benchmarks share: a scratch database, and sending files with storescu.

Every benchmark runs against its own PostgreSQL database (created, migrated with Alembic to
head, dropped afterwards), never the developer's stack or a test run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
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


def create_radiologist(
    env: dict[str, str], username: str, password: str, full_name: str, dicom_name: str
) -> None:
    """A radiologist account made with the web app's own CLI (the password on stdin)."""
    subprocess.run(
        [sys.executable, "-m", "services.web.cli", "create-user", "--username", username,
         "--full-name", full_name, "--dicom-name", dicom_name, "--role", "radiologist"],
        input=password + "\n", text=True, check=True, capture_output=True, cwd=REPO_ROOT,
        env={**os.environ, **env}, timeout=120,
    )  # fmt: skip


def sign_in_to_api(client: httpx.Client, username: str, password: str) -> None:
    """Sign in through the login form (its CSRF token), then carry the API's CSRF header."""
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    if token is None:
        raise RuntimeError("login form without a CSRF token")
    response = client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": token.group(1)},
        follow_redirects=False,
    )
    if response.status_code != 303:
        raise RuntimeError(f"sign-in answered {response.status_code}")
    client.headers["X-CSRF-Token"] = client.get("/api/v1/session").json()["csrf_token"]
