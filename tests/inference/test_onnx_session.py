"""Provider selection: the CPU-side proof that a GPU worker can't silently run on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from shared.inference.onnx_session import (
    ProviderError,
    cpu_threads,
    create_session,
    resolve_providers,
)

GPU_ORDER = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path)
    return path


def test_gpu_order_falls_back_to_cpu_when_gpu_is_not_required() -> None:
    assert resolve_providers(GPU_ORDER, ["CPUExecutionProvider"], require_gpu=False) == [
        "CPUExecutionProvider"
    ]


def test_gpu_order_keeps_the_configured_preference() -> None:
    available = ["CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(GPU_ORDER, available, require_gpu=True) == GPU_ORDER


def test_required_gpu_without_gpu_provider_refuses() -> None:
    with pytest.raises(ProviderError, match="require a GPU"):
        resolve_providers(GPU_ORDER, ["CPUExecutionProvider"], require_gpu=True)


def test_unknown_provider_is_named() -> None:
    with pytest.raises(ProviderError, match="CudaProvider"):
        resolve_providers(["CudaProvider"], ["CPUExecutionProvider"], require_gpu=False)


def test_this_machine_has_no_gpu_provider_so_a_gpu_worker_refuses_to_start(
    tiny_model: Path, tmp_path: Path
) -> None:
    if set(ort.get_available_providers()) & {"CUDAExecutionProvider", "TensorrtExecutionProvider"}:
        pytest.skip("a GPU build of onnxruntime is installed here")
    with pytest.raises(ProviderError):
        create_session(tiny_model, GPU_ORDER, require_gpu=True, cache_dir=tmp_path / "c")


def test_cpu_session_runs_with_affinity_threads_and_caches_the_optimised_graph(
    tiny_model: Path, tmp_path: Path
) -> None:
    session = create_session(tiny_model, GPU_ORDER, cache_dir=tmp_path / "cache")
    assert session.get_providers() == ["CPUExecutionProvider"]
    (y,) = session.run(None, {"x": np.array([[-1.0, 0.0, 2.0]], np.float32)})
    assert y.tolist() == [[0.0, 0.0, 2.0]]
    assert list((tmp_path / "cache").glob("*-cpu.onnx"))
    assert 1 <= cpu_threads()


def test_session_threads_sleep_between_runs_instead_of_spinning(tiny_model: Path) -> None:
    # ORT's default keeps its pool threads spinning on a core between runs: CPU the listener and
    # the other workers on the box need (ops/bench/ort_spinning.py measures what it costs).
    session = create_session(tiny_model, ["CPUExecutionProvider"], threads=2)
    # The key spelt out: ORT accepts any key, so a misspelt constant would pass a test using it.
    options = session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="MEDREGA_MODEL_PATH"):
        create_session(tmp_path / "nope.onnx", ["CPUExecutionProvider"])
