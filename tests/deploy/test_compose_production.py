"""The production profiles of docker-compose.yml, checked as Compose would resolve them.

For each profile a site runs (`gpu`, `gpu` + `gpu1`, `cpu`), the active services form a valid
Compose file whose every dependency is active, whose lanes each have a consumer, whose GPUs each
have one draft worker; the TLS proxy is the only way to the web app; secrets are files; the
settings each service would load really validate in production mode from those files.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from shared.config import Settings

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads(Path(__file__).with_name("compose-spec.json").read_text())
SELECTIONS = [("gpu",), ("gpu", "gpu1"), ("cpu",)]
OUR_DOCKERFILES = {"Dockerfile", "services/worker/Dockerfile.gpu"}
_INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?]([^}]*))?\}")


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load("docker-compose.yml")


def active(compose: dict[str, Any], profiles: tuple[str, ...]) -> dict[str, Any]:
    """The file with only the services `docker compose --profile …` would start."""
    services = {
        name: service
        for name, service in compose["services"].items()
        if not service.get("profiles") or set(service["profiles"]) & set(profiles)
    }
    return {**compose, "services": services}


def resolved(value: object) -> str:
    """${VAR:-default} as Compose resolves it when the site's .env does not set VAR."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", str(value))


def _queues(service: dict[str, Any]) -> set[str]:
    command = service.get("command", [])
    return set(command[command.index("-Q") + 1].split(",")) if "-Q" in command else set()


def _gpu_ids(service: dict[str, Any]) -> list[str]:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return [i for d in devices.get("devices", []) for i in d.get("device_ids", [])]


def _dockerfile(service: dict[str, Any]) -> str | None:
    build = service.get("build")
    if build is None:
        return None
    return "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")


@pytest.mark.parametrize("profiles", SELECTIONS, ids="+".join)
def test_each_profile_is_a_complete_valid_stack(
    compose: dict[str, Any], profiles: tuple[str, ...]
) -> None:
    stack = active(compose, profiles)
    jsonschema.validate(stack, SCHEMA)
    services = stack["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} waits for {dependency}, not in {profiles}"
    lanes = [q for s in services.values() for q in _queues(s)]
    assert {"draft", "interactive", "delivery"} <= set(lanes)
    drafts = [s for s in services.values() if "draft" in _queues(s)]
    gpus = [gpu for s in drafts for gpu in _gpu_ids(s)]
    assert len(gpus) == len(set(gpus)), f"two draft workers share a GPU: {gpus}"
    if "cpu" in profiles:
        assert not any(_gpu_ids(s) for s in services.values()), "the CPU variant reserves a GPU"
        assert all(_dockerfile(s) == "Dockerfile" for s in drafts)
    else:
        assert len(drafts) == len(gpus) == 1 + ("gpu1" in profiles)  # one per GPU, by id


def test_only_the_proxy_and_the_pacs_are_published(compose: dict[str, Any]) -> None:
    published = {
        name: [resolved(p) for p in service["ports"]]
        for name, service in compose["services"].items()
        if service.get("ports")
    }
    assert published == {"proxy": ["443:443", "80:80"], "orthanc": ["4242:4242"]}
    override = _load("docker-compose.listener-port.yml")
    assert [resolved(p) for p in override["services"]["listener"]["ports"]] == ["11112:11112"]
    merged = json.loads(json.dumps(compose))
    merged["services"]["listener"].update(override["services"]["listener"])
    jsonschema.validate(active(merged, ("gpu",)), SCHEMA)


def test_the_proxy_terminates_tls_with_hsts_in_front_of_the_web_app(
    compose: dict[str, Any],
) -> None:
    proxy = compose["services"]["proxy"]
    environment = proxy["environment"]
    [(source, target)] = [
        v.split(":")[:2] for v in proxy["volumes"] if v.split(":")[1].startswith("/etc/nginx")
    ]
    assert target == "/etc/nginx/templates/default.conf.template"
    template = (ROOT / source).read_text()
    assert 'add_header Strict-Transport-Security "max-age=31536000" always;' in template
    assert "listen ${MEDREGA_HTTPS_PORT} ssl;" in template
    assert "return 301 https://" in template  # plain HTTP only redirects
    # Every placeholder is set for the image's envsubst, which touches MEDREGA_* only.
    assert set(re.findall(r"\$\{(MEDREGA_[A-Z_]+)\}", template)) == set(environment) - {
        "NGINX_ENVSUBST_FILTER"
    }
    assert environment["NGINX_ENVSUBST_FILTER"] == "^MEDREGA_"
    key = environment["MEDREGA_PROXY_TLS_KEY"]
    assert key == f"/run/secrets/{proxy['secrets'][0]}"
    web = compose["services"]["web"]
    assert environment["MEDREGA_WEB_UPSTREAM"] == "web:8000" and "ports" not in web
    trusted = web["command"][web["command"].index("--forwarded-allow-ips") + 1]
    assert trusted == proxy["networks"]["default"]["ipv4_address"]


def _secret_targets(service: dict[str, Any]) -> dict[str, str]:
    targets = {}
    for entry in service.get("secrets", []):
        source = entry if isinstance(entry, str) else entry["source"]
        target = source if isinstance(entry, str) else entry.get("target", source)
        targets[target] = source
    return targets


@pytest.mark.parametrize(
    "name", ["migrate", "orthanc", "listener", "worker", "worker-cpu", "delivery-worker",
             "relay", "retention", "web"],
)  # fmt: skip
def test_each_service_loads_production_settings_from_its_secret_files(
    compose: dict[str, Any], name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = compose["services"][name]
    environment = {key: resolved(value) for key, value in service["environment"].items()}
    targets = _secret_targets(service)
    # Every /run/secrets path a setting names is a secret this service mounts.
    for key, value in environment.items():
        if value.startswith("/run/secrets/"):
            assert value.removeprefix("/run/secrets/") in targets, f"{name}: {key} not mounted"
    # Compose mounts the secret files at /run/secrets/<target>: here, a directory of them.
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for target in targets:
        (secrets_dir / target).write_text(f"{target}-" + "x" * 40 + "\n")
    for key in [k for k in os.environ if k.startswith("MEDREGA_")]:
        monkeypatch.delenv(key)
    for key, value in environment.items():
        monkeypatch.setenv(key, str(secrets_dir) if key == "MEDREGA_SECRETS_DIR" else value)
    monkeypatch.chdir(tmp_path)  # no developer's .env
    settings = Settings(_secrets_dir=secrets_dir)  # type: ignore[call-arg]
    assert settings.environment == "production"
    if "medrega_database_password" in targets:
        assert ":medrega_database_password-" in settings.database_url
    if "medrega_broker_password" in targets:
        assert ":medrega_broker_password-" in settings.broker_url


def test_the_images_sharing_the_storage_volume_run_as_one_user(compose: dict[str, Any]) -> None:
    users = {}
    for dockerfile in OUR_DOCKERFILES:
        text = (ROOT / dockerfile).read_text()
        [uid] = re.findall(r"ARG MEDREGA_UID=(\d+)", text)
        assert 'useradd -r -u "$MEDREGA_UID" -g medrega medrega' in text
        assert 'groupadd -r -g "$MEDREGA_UID" medrega' in text
        assert text.rstrip().endswith("USER medrega")
        users[dockerfile] = uid
    assert len(set(users.values())) == 1, users
    for name, service in compose["services"].items():
        if any(str(v).startswith("storage:") for v in service.get("volumes", [])):
            assert _dockerfile(service) in OUR_DOCKERFILES, name


def _installs_tensorrt(dockerfile: str) -> bool:
    """TensorRT in the image: an apt package (libnvinfer…) or a pip wheel (tensorrt), outside
    comments, in the Dockerfile or the `gpu` extra it installs."""
    code = [
        line for line in (ROOT / dockerfile).read_text().splitlines() if not line.startswith("#")
    ]
    extras = re.search(r"^gpu = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.M | re.S)
    text = "\n".join(code) + (extras.group(1) if extras else "")
    return bool(re.search(r"tensorrt|libnvinfer", text, re.I))


def test_the_provider_list_matches_what_each_image_contains(compose: dict[str, Any]) -> None:
    gpu_has_tensorrt = _installs_tensorrt("services/worker/Dockerfile.gpu")
    for name, service in compose["services"].items():
        providers = service.get("environment", {}).get("MEDREGA_MODEL_PROVIDERS")
        if providers is None:
            continue
        listed = providers.split(",")
        if _dockerfile(service) == "Dockerfile":
            assert listed == ["CPUExecutionProvider"], name
        elif not gpu_has_tensorrt:
            assert listed == ["CUDAExecutionProvider", "CPUExecutionProvider"], name


def test_every_app_container_takes_the_site_settings_file(compose: dict[str, Any]) -> None:
    """A MEDREGA_* setting the operator puts in .env (the retention size cap, the FHIR server,
    OIDC) reaches the processes, not only the ${…} interpolation; a site without .env still
    starts. Compose lets `environment:` win over the file."""
    apps = {
        n: s
        for n, s in compose["services"].items()
        if "MEDREGA_DATABASE_URL" in s.get("environment", {})
    }
    assert {"web", "retention", "worker", "delivery-worker", "listener", "orthanc"} <= set(apps)
    apps["medrega-server"] = compose["services"]["medrega-server"]  # MEDREGA_SERVER_*
    for name, service in apps.items():
        assert {"path": ".env", "required": False} in service.get("env_file", []), name


def test_plain_http_redirects_to_the_published_https_port(compose: dict[str, Any]) -> None:
    proxy = compose["services"]["proxy"]
    [published] = [p.rsplit(":", 1)[0] for p in proxy["ports"] if p.endswith(":443")]
    assert proxy["environment"]["MEDREGA_HTTPS_REDIRECT_PORT"] == published
    template = (ROOT / "ops/nginx/medrega-site.conf.template").read_text()
    assert "return 301 https://$host:${MEDREGA_HTTPS_REDIRECT_PORT}$request_uri;" in template


def test_the_orthanc_image_has_the_index_plugin_its_default_loads(compose: dict[str, Any]) -> None:
    """Compose defaults Orthanc's index to PostgreSQL, which loads Debian's
    libOrthancPostgreSQLIndex.so: the image Orthanc runs must install that package."""
    orthanc = compose["services"]["orthanc"]
    assert resolved(orthanc["environment"]["MEDREGA_ORTHANC_INDEX_DATABASE"]) == "orthanc"
    dockerfile = _dockerfile(orthanc)
    assert dockerfile is not None
    code = "\n".join(
        line for line in (ROOT / dockerfile).read_text().splitlines() if not line.startswith("#")
    )
    assert re.search(r"apt-get install[^&]*\borthanc-postgresql\b", code)


def test_the_bundled_model_server_checks_the_key_the_workers_send(compose: dict[str, Any]) -> None:
    """One secret file, both ends: what the workers send as MEDREGA_MLLM_API_KEY is what the
    `medrega-server` service reads as its own key (a file in its MEDREGA_SECRETS_DIR)."""
    server = compose["services"]["medrega-server"]
    assert server["environment"]["MEDREGA_SECRETS_DIR"] == "/run/secrets"
    assert _secret_targets(server) == {"medrega_server_api_key": "mllm_api_key"}
    for name in ("worker", "worker-cpu"):
        assert _secret_targets(compose["services"][name])["medrega_mllm_api_key"] == "mllm_api_key"
