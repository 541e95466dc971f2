"""Locate and Identify through a real Celery worker running the bundled model, in-process
(onnx) or served over HTTP (mllm)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.web import web_settings
from shared.config import get_settings
from tests.support.chat_servers import running_medrega_server
from tests.support.worker_process import delete_test_queues, queue_prefix, start_worker
from tests.web.factories import DraftedStudy

pytestmark = pytest.mark.slow


@pytest.fixture(params=["onnx", "mllm"])
def backend_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The worker's model: in-process ONNX, or a served model over HTTP (MedRegA's protocol,
    answered by our medrega_server)."""
    if request.param == "onnx":
        yield {}
        return
    with running_medrega_server(tmp_path / "medrega-server.log") as url:
        yield {"MEDREGA_MODEL_BACKEND": "mllm", "MEDREGA_MLLM_BASE_URL": f"{url}/v1"}


def test_locate_and_identify_answer_from_the_worker(
    rad_client: TestClient,
    drafted: DraftedStudy,
    web_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    backend_env: dict[str, str],
) -> None:
    prefix = queue_prefix() + "web-"
    monkeypatch.setenv("MEDREGA_QUEUE_PREFIX", prefix)
    get_settings.cache_clear()
    worker = start_worker(
        {"MEDREGA_QUEUE_PREFIX": prefix, "MEDREGA_STORAGE_DIR": str(web_env), **backend_env},
        tmp_path / "worker.log",
        queues=("interactive",),
        concurrency=1,
    )
    try:
        url = f"/api/v1/studies/{drafted.study_id}"
        uid = drafted.sop_instance_uids[0]
        monkeypatch.setattr(
            web_settings, "INTERACTIVE_TIMEOUT_S", 60.0
        )  # first call loads the model
        located = rad_client.post(
            url + "/locate", json={"sop_instance_uid": uid, "query": "right lung"}
        )
        assert located.status_code == 200, located.text + worker.log()[-2000:]
        answer = located.json()
        assert answer["region_code"] == "right_lung" and answer["name_zh"] == "右肺"
        (box,) = answer["boxes"]
        # The patient's right lung is on the image's left half.
        assert 0 <= box["x1"] < box["x2"] <= drafted.columns and box["x2"] < drafted.columns * 0.75
        monkeypatch.setattr(web_settings, "INTERACTIVE_TIMEOUT_S", 20.0)
        chinese = rad_client.post(
            url + "/locate", json={"sop_instance_uid": uid, "query": "右肺"}
        ).json()
        assert chinese["region_code"] == "right_lung" and chinese["boxes"]
        unknown = rad_client.post(
            url + "/locate", json={"sop_instance_uid": uid, "query": "spleen-ish"}
        )
        assert unknown.status_code == 200 and unknown.json()["region_code"] is None
        assert unknown.json()["boxes"] == []

        identified = rad_client.post(url + "/identify", json={"sop_instance_uid": uid, "box": box})
        assert identified.status_code == 200, identified.text
        assert identified.json()["region_code"] == "right_lung"
        assert identified.json()["name_en"] == "right lung"

        beyond = rad_client.post(
            url + "/locate", json={"sop_instance_uid": uid, "frame": 3, "query": "right lung"}
        )
        assert beyond.status_code == 422 and "out of range" in beyond.json()["detail"]
        foreign = rad_client.post(
            url + "/locate", json={"sop_instance_uid": "1.2.3", "query": "heart"}
        )
        assert foreign.status_code == 404
    finally:
        worker.stop()
        delete_test_queues(prefix)


def test_a_busy_or_absent_worker_gets_a_clear_503(
    rad_client: TestClient, drafted: DraftedStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = queue_prefix() + "nobody-"
    monkeypatch.setenv("MEDREGA_QUEUE_PREFIX", prefix)
    get_settings.cache_clear()
    monkeypatch.setattr(web_settings, "INTERACTIVE_TIMEOUT_S", 1.0)
    try:
        response = rad_client.post(
            f"/api/v1/studies/{drafted.study_id}/identify",
            json={
                "sop_instance_uid": drafted.sop_instance_uids[0],
                "box": {"x1": 1, "y1": 1, "x2": 20, "y2": 20},
            },
        )
        assert response.status_code == 503
        assert "busy" in response.json()["detail"]
    finally:
        delete_test_queues(prefix)
