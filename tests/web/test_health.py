from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import Engine


def test_healthz_answers_when_the_database_does(engine: Engine) -> None:
    from services.web.app import app

    response = TestClient(app).get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_healthz_is_503_without_a_database(monkeypatch) -> None:
    from services.web import app as web

    def broken_engine():
        from sqlalchemy import create_engine

        return create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")

    monkeypatch.setattr(web, "get_engine", broken_engine)
    response = TestClient(web.app).get("/healthz")
    assert response.status_code == 503
    assert "database unavailable" in response.json()["detail"]
