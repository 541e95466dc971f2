"""Export a trained checkpoint to ONNX (opset 17, dynamic batch and query count) with the
model's contract in the file's metadata_props.

    python -m model.export [--run ref] [--out model/artifacts/medrega-ref.onnx]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import onnx
import torch

from model.network import N_DOMAIN_OUTPUTS, OUTPUT_NAMES, NetConfig, RegionNet
from model.operating_points import parse_domain_thresholds
from shared.inference.preprocess import (
    CT_WINDOWS,
    NORMALISATION,
    PAD_VALUE,
    PERCENTILES,
    POLICY,
)
from shared.inference.reference_onnx import ModelInfo

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "artifacts" / "medrega-ref.onnx"
MODEL_VERSION = "medrega-ref-1.5.0"
OPSET = 17

OUTPUT_DOC = {
    "domain_probs": "(B, 5) softmax over domain_outputs (4 domains + 'unsupported')",
    "region_presence": "(B, R) probability that each region (region_codes order) is visible",
    "region_boxes": "(B, R, 4) Text→Region box per region, normalised model frame x1,y1,x2,y2",
    "region_abnormal": "(B, R) probability that the region holds a finding on this image",
    "finding_probs": "(B, F) probability that the image shows each finding (finding_codes)",
    "lesion_boxes": "(B, K, 4) top-K lesion boxes, normalised model frame",
    "lesion_scores": "(B, K) calibrated probability that the detection is a true lesion",
    "lesion_classes": "(B, K) int64 index into finding_codes",
    "query_region_probs": "(B, Q, R) Region→Text: which region each query box holds",
}


def load_checkpoint(path: Path) -> tuple[RegionNet, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    meta = ckpt["meta"]
    model = RegionNet(NetConfig(**{**meta["net"], "widths": tuple(meta["net"]["widths"])}))
    model.load_state_dict(_with_defaults(ckpt["state_dict"]))
    model.eval()
    return model, meta


def load_weights(path: Path) -> RegionNet:
    """The committed torch weights (model/artifacts/medrega-ref.pt): config + state dict."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    net = dict(blob["net"])
    model = RegionNet(NetConfig(**{**net, "widths": tuple(net["widths"])}))
    model.load_state_dict(_with_defaults(blob["state_dict"]))
    model.eval()
    return model


def _with_defaults(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights saved before a bias existed load with it 0: the lesion bias (medrega-ref
    1.0.0), the domain logits' offsets (up to 1.2.0)."""
    return {"b_lesion": torch.zeros(()), "b_domain": torch.zeros(N_DOMAIN_OUTPUTS), **state}


def metadata(model: RegionNet, meta: dict) -> dict[str, str]:
    cal = meta.get("calibration", {})
    temps = {k: float(getattr(model, f"t_{k}")) for k in cal.get("temperatures", {})}
    preprocessing = {
        "function": "shared.inference.preprocess.preprocess",
        "policy": POLICY,
        "resize": "letterbox",
        "input_size": model.cfg.input_size,
        "pad_value": PAD_VALUE,
        "value_range": [0.0, 1.0],
        "normalisation": NORMALISATION,
        "modality": "DICOM Modality picks the intensity rule: CT, MR, anything else (X-ray, "
        "or display values such as a rendered PNG when no modality is given)",
        "ct_windows": [list(w) for w in CT_WINDOWS],
        "percentiles": list(PERCENTILES),
        "window": "X-ray/other: DICOM WindowCenter/WindowWidth (first value) after rescale "
        "slope/intercept, then the image's own percentiles; CT and MR: not used",
        "monochrome1": "invert to MONOCHROME2 before anything else",
    }
    props = {
        "model_version": MODEL_VERSION,
        "input_size": str(model.cfg.input_size),
        "input_names": json.dumps(["image", "query_boxes"]),
        "output_names": json.dumps(list(OUTPUT_NAMES)),
        "outputs": json.dumps(OUTPUT_DOC),
        "box_format": "x1,y1,x2,y2 normalised to the square model frame [0,1]; map back to "
        "source pixels with the preprocessing transform",
        "preprocessing": json.dumps(preprocessing),
        "domain_outputs": json.dumps(meta["domain_outputs"]),
        "region_codes": json.dumps(meta["region_codes"]),
        "finding_codes": json.dumps(meta["finding_codes"]),
        "vocab_version": meta["vocab_version"],
        "training_commit": meta["git_commit"],
        "training_steps": str(meta["steps"]),
        "ood_threshold": str(cal.get("ood_threshold", 0.5)),
        "lesion_threshold": str(cal.get("lesion_threshold", 0.5)),
        "lesion_thresholds": json.dumps(cal.get("lesion_thresholds", {}), sort_keys=True),
        "presence_threshold": "0.5",
        "calibration_temperatures": json.dumps(temps),
        "calibration_biases": json.dumps(
            {"lesion": float(model.b_lesion), "unsupported": float(model.b_domain[-1])}
        ),
        "top_k": str(model.cfg.top_k),
        "intended_use": "synthetic-phantom reference model; NOT for clinical use",
    }
    ModelInfo.from_metadata(props)  # the contract as the runtime reads it: fails here, not there
    return props


def with_lesion_threshold(
    meta: dict, threshold: float | None, per_domain: dict[str, float] | None = None
) -> dict:
    """The run's record with other operating points (checked when `metadata` is built)."""
    cal = dict(meta.get("calibration", {}))
    if threshold is not None:
        cal["lesion_threshold"] = float(threshold)
    if per_domain is not None:
        cal["lesion_thresholds"] = dict(per_domain)
    return {**meta, "calibration": cal}


def export(
    checkpoint: Path,
    out: Path,
    lesion_threshold: float | None = None,
    domain_lesion_thresholds: dict[str, float] | None = None,
) -> Path:
    """`lesion_threshold` (every domain) and `domain_lesion_thresholds` (some domains)
    replace the calibration's operating point (metadata only: scores are unchanged), e.g.
    ones chosen on validation under site variations."""
    model, meta = load_checkpoint(checkpoint)
    meta = with_lesion_threshold(meta, lesion_threshold, domain_lesion_thresholds)
    s = model.cfg.input_size
    image = torch.rand(2, 1, s, s)
    query = torch.tensor([[[0.1, 0.1, 0.5, 0.6]], [[0.4, 0.2, 0.9, 0.7]]], dtype=torch.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (image, query),
        str(out),
        dynamo=False,
        opset_version=OPSET,
        input_names=["image", "query_boxes"],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={
            "image": {0: "batch"},
            "query_boxes": {0: "batch", 1: "queries"},
            **{name: {0: "batch"} for name in OUTPUT_NAMES},
            "query_region_probs": {0: "batch", 1: "queries"},
        },
        do_constant_folding=True,
    )
    proto = onnx.load(str(out))
    del proto.metadata_props[:]
    for key, value in metadata(model, meta).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "medrega-pacs reference region-aware model (synthetic phantoms only)"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    # torch weights next to the graph: the parity test and the benchmark compare against them
    torch.save({"net": dict(meta["net"]), "state_dict": model.state_dict()}, out.with_suffix(".pt"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", default="ref", help="run folder under model/runs/")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument(
        "--lesion-threshold", type=float, help="replace the calibrated lesion operating point"
    )
    ap.add_argument(
        "--domain-lesion-thresholds",
        type=parse_domain_thresholds,
        help="domain=threshold,...: domains with an operating point of their own",
    )
    args = ap.parse_args(argv)
    path = export(
        ROOT / "runs" / args.run / "model.pt",
        args.out,
        args.lesion_threshold,
        args.domain_lesion_thresholds,
    )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
