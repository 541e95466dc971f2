"""Web test fixtures: the app on a clean, migrated database with its own storage directory,
users of both roles, and signed-in clients."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from shared.config import get_settings
from shared.db.models import User, UserRole
from tests.web.factories import PASSWORD, DraftedStudy, make_drafted_study, make_user


@pytest.fixture
def web_env(clean_db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Settings for an in-process app: this test's storage directory."""
    storage = tmp_path / "storage"
    storage.mkdir()
    monkeypatch.setenv("MEDREGA_STORAGE_DIR", str(storage))
    get_settings.cache_clear()
    from services.web import rendering

    rendering.cache = rendering.RenderCache()
    yield storage
    get_settings.cache_clear()


@pytest.fixture
def client(web_env: Path) -> Iterator[TestClient]:
    from services.web.app import app

    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def radiologist(db_session: Session) -> User:
    return make_user(db_session, "li.wei", UserRole.RADIOLOGIST, full_name="Li Wei")


@pytest.fixture
def admin(db_session: Session) -> User:
    return make_user(db_session, "pacs.admin", UserRole.ADMIN, full_name="PACS Admin")


def sign_in(client: TestClient, username: str, password: str = PASSWORD) -> TestClient:
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token, "login form without CSRF token"
    response = client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": token.group(1)},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    csrf = client.get("/api/v1/session").json()["csrf_token"]
    client.headers["X-CSRF-Token"] = csrf
    return client


@pytest.fixture
def rad_client(client: TestClient, radiologist: User) -> TestClient:
    return sign_in(client, radiologist.username)


@pytest.fixture
def admin_client(web_env: Path, admin: User) -> Iterator[TestClient]:
    from services.web.app import app

    with TestClient(app) as test_client:
        yield sign_in(test_client, admin.username)


@pytest.fixture
def drafted(db_session: Session, web_env: Path, tmp_path: Path) -> DraftedStudy:
    return make_drafted_study(db_session, web_env, tmp_path / "phantoms")
