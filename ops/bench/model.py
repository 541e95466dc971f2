"""Reference model speed: ONNX Runtime (CPU) vs torch eager (CPU), same inputs, same thread
count, batch 1 and batch 8, in one run. Inputs are real preprocessed phantoms.

    python -m ops.bench.model [--threads 2] [--iters 60]

The last line is JSON: ort_ms_b1, torch_ms_b1, speedup_b1, ort_img_s_b8, torch_img_s_b8,
speedup_b8 (speedup = ORT / torch throughput). With --cuda, torch CUDA throughput is added when
a GPU is present.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
ONNX = ROOT / "model" / "artifacts" / "medrega-ref.onnx"
WEIGHTS = ROOT / "model" / "artifacts" / "medrega-ref.pt"


def inputs(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    from model.phantoms.generator import generate_image
    from model.phantoms.types import DOMAINS
    from shared.inference.preprocess import preprocess

    batch = np.empty((n, 1, size, size), np.float32)
    for i in range(n):
        img = generate_image(DOMAINS[i % 4], 2_000_000 + i)
        batch[i, 0] = preprocess(img.pixels, *img.window, size)[0]
    query = np.tile(np.array([[[0.2, 0.2, 0.6, 0.7]]], np.float32), (n, 1, 1))
    return batch, query


def timed(fn, iters: int) -> float:
    for _ in range(5):
        fn()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--cuda", action="store_true")
    ap.add_argument("--onnx", type=Path, default=ONNX)
    ap.add_argument("--weights", type=Path, default=WEIGHTS)
    args = ap.parse_args(argv)

    import onnxruntime as ort
    import torch

    from model.export import load_weights

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    model = load_weights(args.weights)
    size = model.cfg.input_size
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(args.onnx), opts, providers=["CPUExecutionProvider"])
    x8, q8 = inputs(8, size)
    result: dict[str, float | str] = {}
    for b in (1, 8):
        x, q = x8[:b], q8[:b]
        feeds = {"image": x, "query_boxes": q}
        tx, tq = torch.from_numpy(x), torch.from_numpy(q)

        def run_torch(tx=tx, tq=tq) -> None:
            with torch.inference_mode():
                model(tx, tq)

        iters = args.iters if b == 1 else max(args.iters // 4, 5)
        ort_s = timed(lambda feeds=feeds: sess.run(None, feeds), iters)
        torch_s = timed(run_torch, iters)
        if b == 1:
            result.update(
                ort_ms_b1=round(ort_s * 1e3, 2),
                torch_ms_b1=round(torch_s * 1e3, 2),
                speedup_b1=round(torch_s / ort_s, 2),
            )
        else:
            result.update(
                ort_img_s_b8=round(b / ort_s, 1),
                torch_img_s_b8=round(b / torch_s, 1),
                speedup_b8=round(torch_s / ort_s, 2),
            )
    if args.cuda and torch.cuda.is_available():
        gm = model.cuda()
        gx = torch.from_numpy(np.repeat(x8, 8, axis=0)).cuda()
        gq = torch.from_numpy(np.repeat(q8, 8, axis=0)).cuda()

        def run_cuda() -> None:
            with torch.inference_mode():
                gm(gx, gq)
            torch.cuda.synchronize()

        result["torch_cuda_img_s_b64"] = round(64 / timed(run_cuda, 20), 1)
        result["cuda_device"] = torch.cuda.get_device_name(0)
    print(
        f"threads={args.threads} cpu={platform.processor() or platform.machine()} "
        f"ort={ort.__version__} torch={torch.__version__}",
        file=sys.stderr,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
