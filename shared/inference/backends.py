"""Which model backend this deployment runs (MEDREGA_MODEL_BACKEND)."""

from __future__ import annotations

from shared.config import Settings
from shared.inference.backend import ModelBackend


class BackendUnavailable(RuntimeError):
    pass


def create_backend(settings: Settings) -> ModelBackend:
    if settings.model_backend == "onnx":
        from shared.inference.onnx_backend import OnnxBackend

        return OnnxBackend(
            settings.model_path,
            settings.model_providers,
            require_gpu=settings.model_require_gpu,
            cache_dir=settings.model_cache_dir,
        )
    if settings.model_backend == "mllm":
        from shared.inference.mllm_backend import MllmBackend

        return MllmBackend(settings)
    raise BackendUnavailable(f"unknown MEDREGA_MODEL_BACKEND={settings.model_backend}")
