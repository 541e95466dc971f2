"""The server as clients meet it: `python -m services.medrega_server` in its own process, real
HTTP on a free port, OpenAI-style JSON over httpx, the API key from the environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.inference.medrega_prompts import (
    detection_prompt,
    grounding_prompt,
    recognition_prompt,
    report_generation_prompt,
)
from tests.medrega_server.conftest import MODEL_NAME, PhantomXray, chat_body
from tests.support.chat_servers import running_medrega_server

API_KEY = "test-key-0123"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with running_medrega_server(log_path, {"MEDREGA_SERVER_API_KEY": API_KEY}) as url:
        yield url
    # No PHI in the server's log: neither prompts nor image data.
    logged = Path(log_path).read_text()
    assert "task=locate language=en" in logged
    assert "right lung" not in logged and "base64" not in logged


def test_real_http_round_trip(server: str, xray: PhantomXray) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server, headers=headers, timeout=60) as http:
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == [MODEL_NAME]

        located = http.post(
            "/v1/chat/completions",
            json=chat_body(detection_prompt(["right lung"], "DX", "en"), xray.data_url),
        )
        assert located.status_code == 200, located.text
        body = located.json()
        assert body["object"] == "chat.completion"
        text = body["choices"][0]["message"]["content"]
        assert text.startswith("<ref>right lung</ref><box>[[") and text.endswith("]]</box>")
        box = tuple(int(v) for v in text.split("[[")[1].split("]]")[0].split(","))

        identified = http.post(
            "/v1/chat/completions",
            json=chat_body(recognition_prompt(box, "DX", "zh"), xray.data_url),  # type: ignore[arg-type]
        )
        assert identified.json()["choices"][0]["message"]["content"] == "右肺"

        report = http.post(
            "/v1/chat/completions",
            json=chat_body(report_generation_prompt("DX", "zh"), xray.data_url),
        )
        content = report.json()["choices"][0]["message"]["content"]
        assert content.startswith("影像诊断：") and "影像结论：右侧胸腔积液。" in content

        grounded = http.post(
            "/v1/chat/completions",
            json=chat_body(grounding_prompt(["右肺", "左肺"], "DX", "zh"), xray.data_url),
        )
        content = grounded.json()["choices"][0]["message"]["content"]
        assert content.startswith("<ref>右肺</ref><box>[[") and "<ref>左肺</ref>" in content

        refused = httpx.post(
            f"{server}/v1/chat/completions",
            json=chat_body(detection_prompt(["right lung"], "DX", "en"), xray.data_url),
            timeout=60,
        )
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
