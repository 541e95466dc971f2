"""Provider selection asks what this image can run, not only what onnxruntime was built with."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from shared.inference.onnx_session import (
    ProviderError,
    library_loads,
    resolve_providers,
    usable_providers,
)

# What onnxruntime-gpu's get_available_providers() answers on any machine, TensorRT or not.
GPU_WHEEL = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_tensorrt_is_dropped_when_its_libraries_do_not_load() -> None:
    tried: list[str] = []

    def nothing_loads(name: str) -> bool:
        tried.append(name)
        return False

    assert usable_providers(GPU_WHEEL, nothing_loads) == GPU_WHEEL[1:]
    assert tried == ["libnvinfer.so.10", "libnvinfer.so.8"]
    assert usable_providers(GPU_WHEEL, lambda name: name == "libnvinfer.so.8") == GPU_WHEEL


def test_auto_takes_the_best_usable_provider_first() -> None:
    without_trt = usable_providers(GPU_WHEEL, lambda _: False)
    assert resolve_providers(["auto"], without_trt, require_gpu=True) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert resolve_providers(["auto"], ["CPUExecutionProvider"], require_gpu=False) == [
        "CPUExecutionProvider"
    ]
    with pytest.raises(ProviderError, match="require a GPU"):
        resolve_providers(["auto"], ["CPUExecutionProvider"], require_gpu=True)


def test_this_machine_probes_real_libraries() -> None:
    assert library_loads("libc.so.6")
    assert not library_loads("libmedrega-no-such-library.so.1")
    available = usable_providers(ort.get_available_providers())
    assert "CPUExecutionProvider" in available
    if not library_loads("libnvinfer.so.10") and not library_loads("libnvinfer.so.8"):
        assert "TensorrtExecutionProvider" not in available
    chosen = resolve_providers(["auto"], available, require_gpu=False)
    assert chosen[-1] == "CPUExecutionProvider"
