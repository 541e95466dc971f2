"""ops/k8s/*.yaml are valid Kubernetes objects (JSON schemas of 1.29 and 1.37, strict: no
unknown fields) that run what this repository has, with one GPU per model-worker pod and the
listener as a Service a PACS can reach. No cluster: kubernetes-validate carries the schemas."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "ops" / "k8s").glob("*.yaml"))
VERSIONS = ("1.29.0", "1.37.0")
WORKLOADS = ("Deployment", "StatefulSet", "Job")


def _documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in MANIFESTS
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


DOCUMENTS = _documents()


def _by_kind_name(kind: str, name: str) -> dict[str, Any]:
    return next(d for _, d in DOCUMENTS if d["kind"] == kind and d["metadata"]["name"] == name)


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["spec"]["template"]["spec"]["containers"])


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("where", "doc"), DOCUMENTS, ids=[w for w, _ in DOCUMENTS])
def test_each_object_is_valid_kubernetes(where: str, doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_an_invalid_object_is_refused() -> None:
    """The check can fail: a misspelt field and a wrong type are caught."""
    broken = _by_kind_name("Deployment", "draft-worker")
    misspelt = {**broken, "spec": {**broken["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, VERSIONS[-1], strict=True)
    wrong_type = {**broken, "spec": {**broken["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, VERSIONS[-1], strict=True)


def test_every_model_worker_pod_gets_exactly_one_gpu() -> None:
    for name in ("draft-worker", "interactive-worker"):
        (container,) = _containers(_by_kind_name("Deployment", name))
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1, name
        assert "--concurrency" in container["command"]
        assert container["command"][container["command"].index("--concurrency") + 1] == "1"
    for _, doc in DOCUMENTS:  # nothing else asks for a GPU
        if doc["kind"] in WORKLOADS and doc["metadata"]["name"] not in (
            "draft-worker",
            "interactive-worker",
        ):
            for container in _containers(doc):
                assert "nvidia.com/gpu" not in container.get("resources", {}).get("limits", {})


def test_the_listener_is_a_service_the_pacs_reaches_and_each_replica_a_storage_node() -> None:
    service = _by_kind_name("Service", "listener")
    assert service["spec"]["type"] in ("LoadBalancer", "NodePort")
    # The listener admits peers by address: the PACS's own address must reach it.
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    (port,) = service["spec"]["ports"]
    listener = _by_kind_name("StatefulSet", "listener")
    assert (
        service["spec"]["selector"].items()
        <= listener["spec"]["template"]["metadata"]["labels"].items()
    )
    containers = {c["name"]: c for c in _containers(listener)}
    assert {"name": port["targetPort"], "containerPort": 11112} in containers["listener"]["ports"]
    # Its own volume per replica, shared by the listener and its file server, nobody else.
    assert [t["metadata"]["name"] for t in listener["spec"]["volumeClaimTemplates"]] == ["storage"]
    for _, doc in DOCUMENTS:
        if doc["kind"] in WORKLOADS and doc["metadata"]["name"] != "listener":
            for container in _containers(doc):
                mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
                assert "/var/lib/medrega/storage" not in mounts, doc["metadata"]["name"]
    server = containers["file-server"]
    env = {e["name"]: e for e in server["env"]}
    assert env["MEDREGA_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    headless = _by_kind_name("Service", listener["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert f".{headless['metadata']['name']}." in env["MEDREGA_NODE_READ_URL"]["value"]


def test_commands_run_modules_of_this_repository() -> None:
    for where, doc in DOCUMENTS:
        if doc["kind"] not in WORKLOADS:
            continue
        for container in _containers(doc):
            command = container.get("command", [])
            if command[:2] == ["python", "-m"]:
                module = command[2]
                assert module == "alembic" or (ROOT / (module.replace(".", "/") + ".py")).exists()
            if "-A" in command:  # celery -A <app>
                app = command[command.index("-A") + 1]
                assert (ROOT / (app.replace(".", "/") + ".py")).exists(), where
            if command[:1] == ["uvicorn"]:
                module = command[1].split(":")[0]
                assert (ROOT / (module.replace(".", "/") + ".py")).exists(), where


def test_secrets_are_files_named_like_the_settings_and_no_value_is_inline() -> None:
    settings_names = set(re.findall(r"^    (\w+):", (ROOT / "shared/config.py").read_text(), re.M))
    for where, doc in DOCUMENTS:
        assert doc["kind"] != "Secret", f"{where}: secrets are made by the operator"
        if doc["kind"] not in WORKLOADS:
            continue
        for volume in doc["spec"]["template"]["spec"].get("volumes", []):
            for item in volume.get("secret", {}).get("items", []):
                assert item["path"] == item["key"]
                assert item["key"].removeprefix("medrega_") in settings_names, item["key"]
    config = _by_kind_name("ConfigMap", "medrega-config")
    for key in config["data"]:
        assert not re.search("PASSWORD|TOKEN|SECRET_KEY", key), key
