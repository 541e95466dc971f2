"""The committed ONNX graph computes what the committed torch weights compute."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch

from model.augment import MODALITY
from model.export import load_weights
from model.network import OUTPUT_NAMES
from model.phantoms.generator import generate_image
from shared.inference.preprocess import preprocess
from tests.model.conftest import ONNX_PATH, WEIGHTS_PATH


def _inputs(size: int) -> tuple[np.ndarray, np.ndarray]:
    images, queries = [], []
    for domain, seed in (("cxr", 2_000_021), ("abd_ct", 2_000_022), ("brain_mr", 2_000_023)):
        img = generate_image(domain, seed)
        x, t = preprocess(img.pixels, *img.window, size, MODALITY[domain])
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
    outputs = dict(zip(OUTPUT_NAMES, got, strict=True))
    expected = dict(zip(OUTPUT_NAMES, ref, strict=True))
    for name in OUTPUT_NAMES:
        a, b = expected[name], outputs[name]
        assert a.shape == b.shape, name
        if name.startswith("lesion_"):
            continue  # top-K: compared as sets below (near-tied scores may swap places)
        diff = float(np.abs(a.astype(np.float64) - b).max())
        assert diff <= 1e-4, f"{name}: max abs diff {diff:.2e}"
    assert (expected["lesion_scores"] >= DETECTION_FLOOR).any(), "no detection was compared"
    for i in range(x.shape[0]):
        _assert_same_detections(
            (
                expected["lesion_scores"][i],
                expected["lesion_boxes"][i],
                expected["lesion_classes"][i],
            ),
            (outputs["lesion_scores"][i], outputs["lesion_boxes"][i], outputs["lesion_classes"][i]),
        )


# Detections this far below the runtime's lesion threshold (0.21) never reach a report.
DETECTION_FLOOR = 0.05


def _assert_same_detections(
    torch_out: tuple[np.ndarray, np.ndarray, np.ndarray],
    ort_out: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """Same top-K scores, and every detection that matters has an ORT twin (class, score, box)
    within 1e-4: the order of near-tied detections is the only freedom allowed."""
    t_scores, t_boxes, t_classes = torch_out
    o_scores, o_boxes, o_classes = ort_out
    np.testing.assert_allclose(np.sort(t_scores), np.sort(o_scores), atol=1e-4)
    unmatched = list(range(len(o_scores)))
    for k in np.flatnonzero(t_scores >= DETECTION_FLOOR):
        twin = next(
            (
                j
                for j in unmatched
                if o_classes[j] == t_classes[k]
                and abs(float(o_scores[j]) - float(t_scores[k])) <= 1e-4
                and float(np.abs(o_boxes[j] - t_boxes[k]).max()) <= 1e-4
            ),
            None,
        )
        assert twin is not None, f"detection {k} (score {t_scores[k]:.4f}) has no ORT twin"
        unmatched.remove(twin)


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
