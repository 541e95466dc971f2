"""Secrets from files (MEDREGA_SECRETS_DIR): what production reads, and how it fails."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from pydantic import ValidationError

from shared.config import Settings, get_settings, secrets_dir
from shared.db.session import libpq_url


def _secrets(directory: Path, **values: str) -> Path:
    directory.mkdir()
    for name, value in values.items():
        (directory / f"medrega_{name}").write_text(value + "\n")
    return directory


def test_production_reads_every_secret_from_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _secrets(
        tmp_path / "secrets",
        secret_key="k" * 48,
        pacs_http_password="orthanc-pw",
        database_password="p@ss/w:rd%",
        broker_password="rabbit:pw",
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDREGA_SECRETS_DIR", str(folder))
    monkeypatch.setenv("MEDREGA_ENVIRONMENT", "production")
    monkeypatch.setenv("MEDREGA_DATABASE_URL", "postgresql+psycopg://medrega@db:5432/medrega")
    monkeypatch.setenv("MEDREGA_BROKER_URL", "amqp://medrega@rabbitmq:5672//")
    get_settings.cache_clear()
    try:
        settings = get_settings()
        assert settings.secret("secret_key") == "k" * 48  # the newline is not part of it
        assert settings.secret("pacs_http_password") == "orthanc-pw"
        # Special characters survive the trip into the URLs (quoted) and back out.
        info = psycopg.conninfo.conninfo_to_dict(libpq_url(settings.database_url))
        assert info["password"] == "p@ss/w:rd%" and info["host"] == "db"
        assert settings.broker_url == "amqp://medrega:rabbit%3Apw@rabbitmq:5672//"
        # The environment still wins over a file (one knob to override in an emergency).
        monkeypatch.setenv("MEDREGA_PACS_HTTP_PASSWORD", "from-env")
        get_settings.cache_clear()
        assert get_settings().secret("pacs_http_password") == "from-env"
    finally:
        get_settings.cache_clear()


def test_a_missing_secrets_directory_or_secret_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDREGA_SECRETS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="nowhere is not a directory"):
        secrets_dir()
    folder = _secrets(tmp_path / "partial", secret_key="k" * 48)
    monkeypatch.chdir(tmp_path)
    for key in ("MEDREGA_PACS_HTTP_PASSWORD", "MEDREGA_SECRET_KEY"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ValidationError, match="MEDREGA_PACS_HTTP_PASSWORD must be set"):
        Settings(environment="production", _secrets_dir=folder)  # type: ignore[call-arg]
