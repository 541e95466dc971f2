"""One phantom chest X-ray (with a finding), its PNG as clients send it, the `onnx` backend's
draft of the same DICOM, and a server app around one shared model."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from model.phantoms.__main__ import write_phantom_study
from model.phantoms.dicom_writer import WrittenStudy
from model.phantoms.generator import generate_study
from model.phantoms.splits import seeds
from services.medrega_server.app import create_app
from services.medrega_server.settings import ServerSettings
from shared.config import get_settings
from shared.dicom.pixels import read_frames
from shared.dicom.render import render_frame
from shared.inference.backend import InstanceInput, StudyInput
from shared.inference.onnx_backend import OnnxBackend
from shared.reports.domain import DraftResult

MODEL_NAME = "medrega-ref"


@dataclass(frozen=True)
class PhantomXray:
    study: WrittenStudy
    instance: InstanceInput
    png: bytes
    width: int
    height: int
    pixel_spacing_mm: tuple[float, float]

    @property
    def data_url(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode()


@pytest.fixture(scope="session")
def xray(tmp_path_factory: pytest.TempPathFactory) -> PhantomXray:
    """The first test-split chest X-ray phantom with a finding, rendered at source size."""
    seed = next(
        s
        for s in seeds("test", 400)
        if not generate_study("cxr", s, n_slices=1, max_side=64).is_normal
    )
    study = write_phantom_study("cxr", seed, tmp_path_factory.mktemp("phantom"))
    path = study.files[0]
    rendered = render_frame(path, 1, max_side=None)
    spacing = read_frames(path)[0].pixel_spacing_mm
    assert spacing is not None
    instance = InstanceInput(
        path=path,
        sop_instance_uid=study.sop_instance_uids[0],
        sop_class_uid=study.sop_class_uid,
        series_instance_uid=study.series_instance_uid,
        modality=study.modality,
        series_number=1,
        instance_number=1,
        body_part_examined="CHEST",
        series_description=None,
    )
    return PhantomXray(study, instance, rendered.png, rendered.columns, rendered.rows, spacing)


@pytest.fixture(scope="session")
def backend() -> OnnxBackend:
    return OnnxBackend(get_settings().model_path)


@pytest.fixture(scope="session")
def reference_draft(backend: OnnxBackend, xray: PhantomXray) -> DraftResult:
    """What the worker's `onnx` backend drafts for the same DICOM."""
    draft = backend.draft(StudyInput(xray.study.study_instance_uid, [xray.instance]))
    assert draft.applicable, draft.reason
    return draft


def make_client(backend: OnnxBackend, **overrides: Any) -> TestClient:
    settings = ServerSettings(model_name=MODEL_NAME, **overrides)
    app: FastAPI = create_app(settings, backend=backend)
    return TestClient(app)


@pytest.fixture(scope="session")
def client(backend: OnnxBackend) -> Iterator[TestClient]:
    with make_client(backend) as test_client:
        yield test_client


def chat_body(prompt: str, image_url: str | None, **extra: Any) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
    if image_url is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": image_url}})
    return {
        "model": MODEL_NAME,
        "messages": [
            {"role": "system", "content": "Answer the questions."},
            {"role": "user", "content": content},
        ],
        "max_tokens": 400,
        "temperature": 0,
        **extra,
    }


def ask(client: TestClient, prompt: str, image_url: str, **extra: Any) -> str:
    response = client.post("/v1/chat/completions", json=chat_body(prompt, image_url, **extra))
    assert response.status_code == 200, response.text
    content = response.json()["choices"][0]["message"]["content"]
    assert isinstance(content, str)
    return content
