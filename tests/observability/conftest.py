"""The observability tests run the real pipeline (tests/worker's fixture) and read what its
processes expose: /metrics on each process's own port, and their JSON log lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from shared.reports import lifecycle
from tests.reports.world import make_study, make_user, model_result, running_job
from tests.worker.conftest import pipeline_factory  # noqa: F401  (the fixture, shared)


def drafted_studies(engine: Engine, count: int) -> None:
    """`count` studies with a stored draft each, so their deliveries are owed (tests/reports'
    rows: a fixed model result, a radiologist on file)."""
    with sessionmaker(engine, expire_on_commit=False).begin() as session:
        make_user(session)
        for _ in range(count):
            study = make_study(session)
            assert lifecycle.store_draft(session, running_job(session, study), model_result())


def scrape(port: int) -> str:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    response.raise_for_status()
    return response.text


def samples(exposition: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} of a Prometheus text exposition (parsed, so a malformed
    exposition fails here)."""
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return found


def value(exposition: str, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist (nothing counted yet)."""
    return samples(exposition).get((name, frozenset(labels.items())), 0.0)


def json_lines(log: Path) -> list[dict[str, Any]]:
    """Every log line that is a JSON object (Celery's start banner is plain stdout text)."""
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))  # a line that starts like JSON must be JSON
    return lines
