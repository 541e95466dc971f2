"""Orthanc with its index in PostgreSQL (the production option): a real Orthanc with the Debian
orthanc-postgresql plugin, on its own database of the local PostgreSQL, made by this test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from model.phantoms.__main__ import write_phantom_study
from ops.bench.harness import storescu
from services.pacs.local_orthanc import running_orthanc
from services.pacs.orthanc_config import POSTGRESQL_INDEX_PLUGIN_PATH, render_orthanc_config
from shared.config import Settings
from tests.conftest import PG_ADMIN_DSN, _sqlalchemy_url

DB_NAME = f"medrega_test_orthanc_{os.getpid()}"


@pytest.fixture
def orthanc_database() -> Iterator[str]:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f"CREATE DATABASE \"{DB_NAME}\" ENCODING 'UTF8'")
    yield DB_NAME
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')


def _settings(index_database: str | None) -> Settings:
    return Settings(
        database_url=_sqlalchemy_url("postgres"),
        orthanc_index_database=index_database,
        pacs_http_password="orthanc-index-test",  # type: ignore[arg-type]
    )


def test_the_index_plugin_is_configured_only_when_asked(tmp_path: Path) -> None:
    for sqlite in (None, ""):  # empty: a site upgrading keeps its SQLite index
        plain = render_orthanc_config(_settings(sqlite), tmp_path)
        assert "PostgreSQL" not in plain
        assert str(POSTGRESQL_INDEX_PLUGIN_PATH) not in plain["Plugins"]
    indexed = render_orthanc_config(_settings("orthanc_index"), tmp_path)
    assert str(POSTGRESQL_INDEX_PLUGIN_PATH) in indexed["Plugins"]
    assert indexed["PostgreSQL"]["EnableIndex"] is True
    assert indexed["PostgreSQL"]["EnableStorage"] is False  # files stay on Orthanc's disk
    assert indexed["PostgreSQL"]["Database"] == "orthanc_index"
    with pytest.raises(ValueError):
        _settings("orthanc; DROP DATABASE medrega")


def _resources(database: str) -> int:
    dsn = PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{database}"
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM resources WHERE resourcetype = 3").fetchone()
    assert row is not None
    return int(row[0])


def test_orthanc_indexes_in_postgresql_and_keeps_it_across_a_restart(
    orthanc_database: str, tmp_path: Path
) -> None:
    assert POSTGRESQL_INDEX_PLUGIN_PATH.exists(), "Debian package orthanc-postgresql missing"
    study = write_phantom_study("cxr", 21, tmp_path / "in", max_side=128)
    settings = _settings(orthanc_database)
    workdir = tmp_path / "orthanc"
    with running_orthanc(workdir, settings, listener_port=1, stable_age_s=3600) as orthanc:
        storescu(study.files, orthanc.dicom_port, orthanc.ae_title)
        assert len(orthanc.client.get_json("/instances")) == len(study.files)
    # The instances are rows of Orthanc's tables in its PostgreSQL database (type 3: instance),
    # and no SQLite index was written.
    assert _resources(orthanc_database) == len(study.files)
    assert not any((workdir / "index").glob("index*"))
    with running_orthanc(workdir, settings, listener_port=1, stable_age_s=3600) as orthanc:
        studies = orthanc.client.get_json("/studies")
        assert len(studies) == 1
        assert len(orthanc.client.get_json("/instances")) == len(study.files)
    log = (workdir / orthanc.log_path.name).read_text(errors="replace")
    assert "PostgreSQL" in log
