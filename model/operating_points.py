"""A model's lesion operating points: one lesion threshold for every domain, and optionally a
threshold of its own for some domains (metadata only: the graph, its scores and the weights
are unchanged). Choose them on validation; the runtime applies the image's domain's.

    python -m model.operating_points --onnx IN --out OUT [--lesion-threshold 0.7]
        [--domain-lesion-thresholds cxr=0.45,abd_ct=0.65] [--model-version medrega-ref-X]

The torch weights beside IN (`.pt`) are copied beside OUT, as `model.export` leaves them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import onnx

from shared.inference.reference_onnx import ModelInfo


def parse_domain_thresholds(text: str) -> dict[str, float]:
    """'cxr=0.45,abd_ct=0.65' → {'cxr': 0.45, 'abd_ct': 0.65} (the values are checked with the
    rest of the contract, by the runtime's reader)."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        domain, sep, value = part.partition("=")
        if not sep or not domain:
            raise ValueError(f"expected domain=threshold, got {part!r}")
        out[domain.strip()] = float(value)
    return out


def set_operating_points(
    props: dict[str, str],
    lesion_threshold: float | None = None,
    domain_thresholds: dict[str, float] | None = None,
    model_version: str | None = None,
) -> dict[str, str]:
    """The metadata with the given operating points; checked as the runtime reads it."""
    out = dict(props)
    if lesion_threshold is not None:
        out["lesion_threshold"] = str(float(lesion_threshold))
    if domain_thresholds is not None:
        out["lesion_thresholds"] = json.dumps(domain_thresholds, sort_keys=True)
    if model_version is not None:
        out["model_version"] = model_version
    ModelInfo.from_metadata(out)  # an unknown domain or a bad value fails here, not in the worker
    return out


def rewrite(
    onnx_in: Path,
    onnx_out: Path,
    lesion_threshold: float | None,
    domain_thresholds: dict[str, float] | None,
    model_version: str | None,
) -> dict[str, str]:
    """Writes `onnx_out`; returns its metadata."""
    proto = onnx.load(str(onnx_in))
    props = {p.key: p.value for p in proto.metadata_props}
    new = set_operating_points(props, lesion_threshold, domain_thresholds, model_version)
    del proto.metadata_props[:]
    for key, value in new.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(onnx_out))
    weights = onnx_in.with_suffix(".pt")
    if weights.exists() and weights.resolve() != onnx_out.with_suffix(".pt").resolve():
        shutil.copyfile(weights, onnx_out.with_suffix(".pt"))
    return new


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--onnx", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--lesion-threshold", type=float, help="the operating point of every domain")
    ap.add_argument(
        "--domain-lesion-thresholds",
        type=parse_domain_thresholds,
        help="domain=threshold,...: domains with an operating point of their own",
    )
    ap.add_argument("--model-version", help="the version the rewritten model reports")
    args = ap.parse_args(argv)
    props = rewrite(
        args.onnx,
        args.out,
        args.lesion_threshold,
        args.domain_lesion_thresholds,
        args.model_version,
    )
    print(
        f"wrote {args.out}: {props['model_version']}, lesion threshold "
        f"{props['lesion_threshold']}, per domain {props.get('lesion_thresholds', '{}')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
