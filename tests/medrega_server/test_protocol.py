"""The OpenAI side: response shape, models, health, and every refusal in OpenAI's error JSON."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.medrega_server.settings import load_server_settings
from shared.inference.medrega_prompts import (
    detection_prompt,
    grounding_prompt,
    report_generation_prompt,
)
from shared.inference.onnx_backend import OnnxBackend
from tests.medrega_server.conftest import MODEL_NAME, PhantomXray, chat_body, make_client

LOCATE = detection_prompt(["right lung"], "DX", "en")


def png_url(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def assert_error(response: Any, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    assert fragment in error["message"], error["message"]


def test_completion_has_openai_shape(client: TestClient, xray: PhantomXray) -> None:
    response = client.post("/v1/chat/completions", json=chat_body(LOCATE, xray.data_url))
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert body["id"].startswith("chatcmpl-")
    assert (body["object"], body["model"]) == ("chat.completion", MODEL_NAME)
    assert isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    usage = body["usage"]
    assert usage["prompt_tokens"] > 256  # the image counts as MedRegA's 256 visual tokens
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_string_content_and_image_from_an_earlier_turn(
    client: TestClient, xray: PhantomXray
) -> None:
    body = chat_body(report_generation_prompt("DX", "en"), xray.data_url)
    body["messages"] += [
        {"role": "assistant", "content": "…"},
        {"role": "user", "content": LOCATE},
    ]
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"].startswith("<ref>right lung</ref>")


def test_max_tokens_does_not_cut_the_answer(client: TestClient, xray: PhantomXray) -> None:
    """Answers are structured text: a cut report would lose its boxes."""
    prompt = grounding_prompt(["right lung", "left lung"], "DX", "en")
    body = chat_body(prompt, xray.data_url, max_tokens=5)
    choice = client.post("/v1/chat/completions", json=body).json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"].endswith("unremarkable.")


def test_models_and_health(client: TestClient) -> None:
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [(m["id"], m["object"]) for m in models["data"]] == [(MODEL_NAME, "model")]
    assert client.get(f"/v1/models/{MODEL_NAME}").json()["id"] == MODEL_NAME
    assert_error(client.get("/v1/models/gpt-4o"), 404, "does not exist")
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["model_version"]


def test_out_of_distribution_image_is_refused_in_words(client: TestClient) -> None:
    tiny = png_url(np.full((32, 32), 128, np.uint8))
    response = client.post(
        "/v1/chat/completions", json=chat_body(report_generation_prompt(None, "en"), tiny)
    )
    text = response.json()["choices"][0]["message"]["content"]
    assert "not supported by medrega-ref" in text and "<box>" not in text
    response = client.post(
        "/v1/chat/completions", json=chat_body(report_generation_prompt(None, "zh"), tiny)
    )
    assert "无法作答" in response.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("change", "status", "fragment"),
    [
        ({"prompt": "Tell me a joke."}, 400, "not a MedRegA task"),
        ({"image": None}, 400, "no image"),
        ({"image": "https://example.org/x.png"}, 400, "not fetched"),
        ({"image": "data:image/png;base64,%%%not-base64%%%"}, 400, "not valid base64"),
        ({"image": "data:image/png;base64," + base64.b64encode(b"hello").decode()}, 400, "decode"),
        ({"image": "file:///etc/passwd"}, 400, "data URL"),
        ({"stream": True}, 400, "stream"),
        ({"n": 2}, 400, "n=1"),
        ({"model": "gpt-4o"}, 404, "does not exist"),
        ({"pixel_spacing_mm": [0, 0.2]}, 400, "pixel spacing"),
        ({"prompt": "What is <ref>this</ref><box>[[600, 600, 500, 500]]</box>?"}, 400, "box"),
    ],
)
def test_refusals(
    client: TestClient, xray: PhantomXray, change: dict[str, Any], status: int, fragment: str
) -> None:
    prompt = change.pop("prompt", LOCATE)
    image = change.pop("image", xray.data_url)
    body = chat_body(prompt, image, **change)
    assert_error(client.post("/v1/chat/completions", json=body), status, fragment)


def test_malformed_requests_get_openai_errors_without_echo(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": []})
    assert_error(response, 400, "messages")
    secret = "PATIENT-NAME-12345"
    response = client.post(
        "/v1/chat/completions", json={"model": MODEL_NAME, "messages": [{"role": secret}]}
    )
    assert_error(response, 400, "invalid request")
    assert secret not in response.text
    response = client.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "invalid request")


def test_api_key(backend: OnnxBackend, xray: PhantomXray) -> None:
    with make_client(backend, api_key="s3cret") as keyed:
        body = chat_body(LOCATE, xray.data_url)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = keyed.post("/v1/chat/completions", json=body, headers=headers)
            assert_error(response, 401, "API key")
            assert response.json()["error"]["code"] == "invalid_api_key"
        assert_error(keyed.get("/v1/models"), 401, "API key")
        good = {"Authorization": "Bearer s3cret"}
        assert keyed.post("/v1/chat/completions", json=body, headers=good).status_code == 200
        assert keyed.get("/v1/models", headers=good).status_code == 200
        assert keyed.get("/healthz").status_code == 200  # probes carry no key


def test_the_api_key_from_the_secrets_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As every other service reads its secrets: a file named like the setting in
    MEDREGA_SECRETS_DIR (Compose's /run/secrets); the environment wins; an empty file (the
    README's `: > secrets/mllm_api_key`) is no key, as the worker reads its own."""
    monkeypatch.delenv("MEDREGA_SERVER_API_KEY", raising=False)
    monkeypatch.setenv("MEDREGA_SECRETS_DIR", str(tmp_path))
    key_file = tmp_path / "medrega_server_api_key"
    key_file.write_text("from-the-file\n")
    key = load_server_settings().api_key
    assert key is not None and key.get_secret_value() == "from-the-file"
    monkeypatch.setenv("MEDREGA_SERVER_API_KEY", "from-the-environment")
    key = load_server_settings().api_key
    assert key is not None and key.get_secret_value() == "from-the-environment"
    monkeypatch.delenv("MEDREGA_SERVER_API_KEY")
    key_file.write_text("\n")
    assert load_server_settings().api_key is None


def test_oversized_bodies_get_413(backend: OnnxBackend) -> None:
    with make_client(backend, max_body_bytes=4096) as small:
        body = chat_body(LOCATE, "data:image/png;base64," + "A" * 8000)
        assert_error(small.post("/v1/chat/completions", json=body), 413, "larger than")

        def chunks() -> Any:
            yield b'{"model": "x", "messages": ['
            for _ in range(10):
                yield b" " * 1000

        response = small.post(
            "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
        )
        assert_error(response, 413, "larger than")
