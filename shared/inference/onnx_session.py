"""ONNX Runtime session creation: provider choice, GPU guarantees, threads and caches.

Providers are tried in the configured order (`auto`: TensorRT → CUDA → CPU, those this image can
run). What onnxruntime reports is not enough: `get_available_providers()` names every provider
the build includes, so onnxruntime-gpu names TensorRT on an image without TensorRT's libraries;
a provider whose libraries do not load here is dropped before the session is made. A worker
configured to require the GPU that ends up with only the CPU provider refuses to start: a GPU
worker that silently limps on the CPU would miss every turnaround target without telling anyone.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort

log = logging.getLogger(__name__)

GPU_PROVIDERS = frozenset({"TensorrtExecutionProvider", "CUDAExecutionProvider"})
KNOWN_PROVIDERS = GPU_PROVIDERS | {"CPUExecutionProvider"}
# MEDREGA_MODEL_PROVIDERS=auto: the best this image can run, in this order.
PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
AUTO = "auto"
# Shared libraries a provider needs beyond onnxruntime itself (TensorRT 10 or 8); onnxruntime-gpu
# loads the CUDA libraries itself (also from pip's nvidia-* wheels), so they are not probed here.
PROVIDER_LIBRARIES = {"TensorrtExecutionProvider": ("libnvinfer.so.10", "libnvinfer.so.8")}


class ProviderError(RuntimeError):
    """The configured execution providers can't be honoured; the message says what to do."""


def cpu_threads() -> int:
    """Cores this process may run on (containers and taskset restrict this, not os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _provider_options(name: str, cache_dir: Path) -> dict[str, Any]:
    if name == "TensorrtExecutionProvider":
        engines = cache_dir / "tensorrt"
        engines.mkdir(parents=True, exist_ok=True)
        return {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(engines),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(engines),
            "trt_fp16_enable": True,
        }
    if name == "CUDAExecutionProvider":
        # EXHAUSTIVE benchmarks every conv at first run: seconds of start-up for no gain here.
        return {"cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": True}
    return {}


def library_loads(name: str) -> bool:
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def usable_providers(
    available: Sequence[str], loads: Callable[[str], bool] = library_loads
) -> list[str]:
    """`available` (onnxruntime's list) without the providers whose libraries are missing here."""
    usable = []
    for provider in available:
        libraries = PROVIDER_LIBRARIES.get(provider)
        if libraries and not any(loads(library) for library in libraries):
            log.info("%s is built in but its libraries are not installed: skipped", provider)
            continue
        usable.append(provider)
    return usable


def resolve_providers(
    requested: Sequence[str], available: Sequence[str], *, require_gpu: bool
) -> list[str]:
    """The requested providers (or `auto`) that are available, in the requested order."""
    if list(requested) == [AUTO]:
        requested = [p for p in PREFERENCE if p in available]
    unknown = [p for p in requested if p not in KNOWN_PROVIDERS]
    if unknown:
        raise ProviderError(
            f"unknown execution provider(s) {unknown}; use `auto` or some of "
            f"{sorted(KNOWN_PROVIDERS)}"
        )
    chosen = [p for p in requested if p in available]
    missing = [p for p in requested if p not in available]
    if require_gpu and not GPU_PROVIDERS & set(chosen):
        raise ProviderError(
            "this worker is configured to require a GPU (MEDREGA_MODEL_REQUIRE_GPU=true) but "
            f"onnxruntime offers only {list(available)}; install the `gpu` extra "
            "(onnxruntime-gpu) with a matching CUDA/cuDNN, or unset MEDREGA_MODEL_REQUIRE_GPU"
        )
    if not chosen:
        raise ProviderError(f"none of the requested providers {list(requested)} is available")
    if missing:
        log.warning("execution providers not available, skipped: %s", missing)
    return chosen


def _model_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def session_options(threads: int | None = None, *, spinning: bool = False) -> ort.SessionOptions:
    """What every model session starts from: `threads` intra-op threads (default: the cores this
    process may use), one inter-op thread, every graph optimisation, and pool threads that sleep
    between runs. ORT's default has them spin on a core between and after runs, which burns CPU
    the listener, the web app and the other workers on the box need (about twice the CPU per
    image run one at a time; ops/bench/ort_spinning.py, which alone asks for `spinning`)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def create_session(
    model_path: Path,
    providers: Sequence[str],
    *,
    require_gpu: bool = False,
    cache_dir: Path | None = None,
    threads: int | None = None,
) -> ort.InferenceSession:
    """An InferenceSession on the best configured provider; verifies what ORT really gave."""
    if not model_path.is_file():
        raise FileNotFoundError(f"model file not found: {model_path} (MEDREGA_MODEL_PATH)")
    available = usable_providers(ort.get_available_providers())
    chosen = resolve_providers(providers, available, require_gpu=require_gpu)
    cache = cache_dir or model_path.parent / ".cache"
    options = session_options(threads)
    if chosen == ["CPUExecutionProvider"]:
        # Cache the optimised graph so a restarted worker starts faster (CPU only: ORT
        # documents optimised models as provider-specific).
        cache.mkdir(parents=True, exist_ok=True)
        options.optimized_model_filepath = str(cache / f"{_model_digest(model_path)}-cpu.onnx")
    session = ort.InferenceSession(
        str(model_path),
        sess_options=options,
        providers=[(p, _provider_options(p, cache)) for p in chosen],
    )
    got = session.get_providers()
    # ORT silently drops a provider whose libraries fail to load (e.g. CUDA without cuDNN).
    if require_gpu and not GPU_PROVIDERS & set(got):
        raise ProviderError(
            f"asked for {chosen} but ONNX Runtime started the session on {got}: the GPU "
            "provider failed to initialise (check the CUDA/cuDNN libraries in the worker log)"
        )
    log.info(
        "model %s loaded on %s with %d threads", model_path.name, got, options.intra_op_num_threads
    )
    return session
