"""Re-fit the shipped model's calibration on the validation split, without retraining, and
export it again (ONNX + torch weights beside it).

    python -m model.recalibrate [--weights model/artifacts/medrega-ref.pt]
                                [--onnx model/artifacts/medrega-ref.onnx]

Temperatures, the lesion score's Platt bias, the OOD gate and the lesion threshold are fitted
exactly as at the end of `model.train` (`model.calibration.calibrate`). What the training run
recorded (its commit, steps, vocabularies) is carried over from the current ONNX metadata, so
the artifact still says which training produced its weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import onnx
import torch

from model import site_copies
from model.calibration import calibrate
from model.export import DEFAULT_OUT, export, load_weights
from model.train import Recipe
from model.training_data import load_or_build


def training_meta(onnx_path: Path, net: dict[str, object]) -> dict[str, object]:
    """The training run's record, as the exported graph carries it."""
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    return {
        "net": net,
        "steps": int(props["training_steps"]),
        "git_commit": props["training_commit"],
        "vocab_version": props["vocab_version"],
        "region_codes": json.loads(props["region_codes"]),
        "finding_codes": json.loads(props["finding_codes"]),
        "domain_outputs": json.loads(props["domain_outputs"]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--weights", type=Path, default=DEFAULT_OUT.with_suffix(".pt"))
    ap.add_argument("--onnx", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    blob = torch.load(args.weights, map_location="cpu", weights_only=True)
    model = load_weights(args.weights)
    meta = training_meta(args.onnx, dict(blob["net"]))
    recipe = Recipe()
    val = load_or_build("val", recipe.val_per_domain, model.cfg.input_size, recipe.max_side)
    site = site_copies.load_or_build(recipe.site_per_domain, model.cfg.input_size)
    meta["calibration"] = calibrate(model, val, site=site)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = Path(scratch) / "model.pt"
        torch.save({"state_dict": model.state_dict(), "meta": meta}, checkpoint)
        path = export(checkpoint, args.onnx)
    print(json.dumps(meta["calibration"]))
    print(f"wrote {path} and {path.with_suffix('.pt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
