"""docker-compose.yml is a valid Compose file whose services run things that exist in this repo.

Docker does not run on the CI machine, so the file is checked against the Compose Specification's
JSON schema (vendored: tests/deploy/compose-spec.json) and against the repository itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = Path(__file__).with_name("compose-spec.json")
OUR_SERVICES = {
    "migrate",
    "orthanc",
    "listener",
    "worker",
    "worker-gpu1",
    "interactive-worker",
    "worker-cpu",
    "interactive-worker-cpu",
    "delivery-worker",
    "relay",
    "retention",
    "web",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_valid_against_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(compose, schema)


def test_schema_rejects_a_broken_file(compose: dict[str, Any]) -> None:
    """The validation above has teeth: a typo'd key is caught."""
    schema = json.loads(SCHEMA.read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["web"]["healthchek"] = broken["services"]["web"].pop("healthcheck")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_the_whole_system_is_there(compose: dict[str, Any]) -> None:
    assert {"postgres", "rabbitmq"} | OUR_SERVICES <= set(compose["services"])


def _module_file(module: str) -> Path:
    base = ROOT / Path(*module.split("."))
    return base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__main__.py"


def _referenced_files(command: list[str]) -> list[Path]:
    """Files in this repo that a service's command needs."""
    files: list[Path] = []
    for i, arg in enumerate(command):
        if arg == "-m" and command[0] == "python":
            files.append(_module_file(command[i + 1]))
        if arg == "-A":  # celery -A package.module
            files.append(_module_file(command[i + 1]))
        if re.fullmatch(r"[a-z_.]+:[a-z_]+", arg):  # uvicorn module:attribute
            files.append(_module_file(arg.split(":")[0]))
    return files


@pytest.mark.parametrize("name", sorted(OUR_SERVICES))
def test_commands_exist_in_the_repo(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    command = service["command"]
    assert isinstance(command, list), "exec form, so no shell mangles arguments"
    files = _referenced_files(command)
    if command[:3] == ["python", "-m", "alembic"]:
        files = [ROOT / "alembic.ini", ROOT / "migrations" / "env.py"]
    assert files, f"{name}: command names nothing in the repo: {command}"
    for path in files:
        assert path.exists(), f"{name}: {path.relative_to(ROOT)} does not exist"
    build = service["build"]
    dockerfile = build if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
    if isinstance(build, str):
        dockerfile = "Dockerfile"
    assert (context / dockerfile).exists()


def test_healthchecks_and_startup_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in {"postgres", "rabbitmq"} | OUR_SERVICES - {"migrate"}:
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    for name in OUR_SERVICES - {"orthanc"}:
        assert services[name]["depends_on"], f"{name} starts before what it needs"
        for dep, cond in services[name]["depends_on"].items():
            assert cond["condition"] in {"service_healthy", "service_completed_successfully"}
            assert dep in services


def test_worker_reserves_a_gpu(compose: dict[str, Any]) -> None:
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def _celery_queues(command: list[str]) -> set[str]:
    return set(command[command.index("-Q") + 1].split(",")) if "-Q" in command else set()


def test_every_lane_has_its_own_consumer(compose: dict[str, Any]) -> None:
    """Drafts, Locate/Identify and deliveries each have a worker; no worker mixes the model
    lanes (a click would wait behind a draft), and only queues the app declares are consumed."""
    from services.worker.celery_app import app, settings

    declared = {queue.name.removeprefix(settings.queue_prefix) for queue in app.conf.task_queues}
    lanes = {
        name: _celery_queues(service["command"])
        for name, service in compose["services"].items()
        if "celery" in service.get("command", [])[:1]
    }
    assert set().union(*lanes.values()) == declared == {"draft", "interactive", "delivery"}
    assert all(len(queues) == 1 for queues in lanes.values()), lanes
    for name, queues in lanes.items():
        profiles = compose["services"][name].get("profiles", [])
        if queues & {"draft", "interactive"} and any(p.startswith("gpu") for p in profiles):
            devices = compose["services"][name]["deploy"]["resources"]["reservations"]["devices"]
            assert any("gpu" in d["capabilities"] for d in devices), f"{name} needs the GPU"


def test_no_secret_is_in_the_file_or_in_an_environment_variable(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert not re.search(r"PASSWORD:\s*['\"]?[A-Za-z0-9]{3,}['\"]?\s*$", text, re.M)
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET_KEY|API_KEY|TLS_KEY", key):
                assert str(value).startswith("/run/secrets/"), f"{name}: {key} is not a file"
            assert not re.search(r"://[^/@\s]+:[^/@\s]+@", str(value)), (
                f"{name}: {key} has a password"
            )
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("./secrets/")
