"""The committed ONNX graph computes what the committed torch weights compute."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch

from model.export import load_weights
from model.network import OUTPUT_NAMES
from model.phantoms.generator import generate_image
from shared.inference.preprocess import preprocess
from tests.model.conftest import ONNX_PATH, WEIGHTS_PATH


def _inputs(size: int) -> tuple[np.ndarray, np.ndarray]:
    images, queries = [], []
    for domain, seed in (("cxr", 2_000_021), ("abd_ct", 2_000_022), ("brain_mr", 2_000_023)):
        img = generate_image(domain, seed)
        x, t = preprocess(img.pixels, *img.window, size)
        images.append(x)
        boxes = [r.box for r in img.regions[:2]] or [(0, 0, 10, 10)] * 2
        boxes = (boxes * 2)[:2]
        queries.append(t.to_model_normalised(np.array(boxes, float)))
    rng = np.random.default_rng(0)
    images.append(rng.random((size, size), dtype=np.float32))  # noise: the OOD path too
    queries.append(np.array([[0.1, 0.1, 0.4, 0.5], [0.5, 0.5, 0.9, 0.9]]))
    return np.stack(images)[:, None].astype(np.float32), np.stack(queries).astype(np.float32)


def test_onnx_matches_torch() -> None:
    model = load_weights(WEIGHTS_PATH)
    x, q = _inputs(model.cfg.input_size)
    with torch.inference_mode():
        ref = [t.numpy() for t in model(torch.from_numpy(x), torch.from_numpy(q))]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(ONNX_PATH), opts, providers=["CPUExecutionProvider"])
    got = sess.run(list(OUTPUT_NAMES), {"image": x, "query_boxes": q})
    for name, a, b in zip(OUTPUT_NAMES, ref, got, strict=True):
        assert a.shape == b.shape, name
        if name == "lesion_classes":
            assert np.array_equal(a, b), name
        else:
            diff = float(np.abs(a.astype(np.float64) - b).max())
            assert diff <= 1e-4, f"{name}: max abs diff {diff:.2e}"


def test_graph_contract() -> None:
    proto = onnx.load(str(ONNX_PATH), load_external_data=False)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    meta = {p.key: p.value for p in proto.metadata_props}
    for key in (
        "model_version",
        "input_size",
        "preprocessing",
        "domain_outputs",
        "region_codes",
        "finding_codes",
        "vocab_version",
        "training_commit",
        "ood_threshold",
        "lesion_threshold",
        "calibration_temperatures",
    ):
        assert meta.get(key), key
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param  # symbolic: dynamic batch
    assert ONNX_PATH.stat().st_size < 20e6
