"""Lesion operating points: one threshold for every domain and, per domain, one of its own
(ONNX metadata `lesion_thresholds`), applied by the runtime to each image's domain."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from model.augment import MODALITY
from model.operating_points import main, parse_domain_thresholds, set_operating_points
from model.phantoms.generator import generate_study
from shared.inference.reference_onnx import ModelContractError, ModelInfo, ReferenceModel
from tests.model.conftest import ONNX_PATH


def _rewritten(tmp_path: Path, name: str, *args: str) -> ReferenceModel:
    out = tmp_path / f"{name}.onnx"
    assert main(["--onnx", str(ONNX_PATH), "--out", str(out), *args]) == 0
    return ReferenceModel.load(out, threads=1)


def test_each_domain_is_cut_at_its_own_threshold(tmp_path: Path) -> None:
    # a chest X-ray with detections at 0.98, 0.59 and 0.44, an abdominal CT slice with one at
    # 0.85 (1.4.0; seeds outside every split)
    images = {
        "cxr": generate_study("cxr", 2_000_043).images[0],
        "abd_ct": generate_study("abd_ct", 2_000_046).images[10],
    }
    items = [(im.pixels, *im.window, MODALITY[d]) for d, im in images.items()]
    low = _rewritten(tmp_path, "low", "--lesion-threshold", "0.05")
    split = _rewritten(
        tmp_path, "split", "--lesion-threshold", "0.05", "--domain-lesion-thresholds", "cxr=0.9"
    )
    assert split.info.lesion_thresholds == {"cxr": 0.9}
    cxr_low, abd_low = low.predict(items)
    cxr_split, abd_split = split.predict(items)
    assert (cxr_low.domain, abd_low.domain) == ("cxr", "abd_ct")
    # the premise: the chest X-ray has detections on both sides of its own threshold
    assert any(les.score < 0.9 for les in cxr_low.lesions)
    assert any(les.score >= 0.9 for les in cxr_low.lesions)
    assert any(les.score < 0.9 for les in abd_low.lesions)
    assert [les.score for les in cxr_split.lesions] == [
        les.score for les in cxr_low.lesions if les.score >= 0.9
    ]
    # a domain without its own point keeps the common one
    assert [les.score for les in abd_split.lesions] == [les.score for les in abd_low.lesions]


def test_the_rewrite_keeps_everything_else_and_can_set_the_version(tmp_path: Path) -> None:
    out = tmp_path / "v.onnx"
    main(
        [
            "--onnx", str(ONNX_PATH), "--out", str(out),
            "--domain-lesion-thresholds", "cxr=0.45,abd_ct=0.65",
            "--model-version", "medrega-ref-test",
        ]
    )  # fmt: skip
    before = {p.key: p.value for p in onnx.load(str(ONNX_PATH)).metadata_props}
    after = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert after["model_version"] == "medrega-ref-test"
    assert json.loads(after["lesion_thresholds"]) == {"abd_ct": 0.65, "cxr": 0.45}
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {"model_version", "lesion_thresholds"}
    assert out.with_suffix(".pt").read_bytes() == ONNX_PATH.with_suffix(".pt").read_bytes()


def test_a_broken_operating_point_is_refused_with_its_reason() -> None:
    props = {p.key: p.value for p in onnx.load(str(ONNX_PATH)).metadata_props}
    with pytest.raises(ModelContractError, match="lacks.*'knee'"):
        set_operating_points(props, domain_thresholds={"knee": 0.5})
    with pytest.raises(ModelContractError, match=r"lesion_thresholds\[cxr\] outside \(0, 1\)"):
        set_operating_points(props, domain_thresholds=parse_domain_thresholds("cxr=0"))
    with pytest.raises(ModelContractError, match=r"lesion_threshold outside \(0, 1\)"):
        set_operating_points(props, lesion_threshold=1.2)
    with pytest.raises(ValueError, match="domain=threshold"):
        parse_domain_thresholds("cxr0.4")
    assert parse_domain_thresholds(" cxr=0.45, abd_ct=0.65 ") == {"cxr": 0.45, "abd_ct": 0.65}
    # a model without the key: every domain at the common threshold
    plain = {k: v for k, v in props.items() if k != "lesion_thresholds"}
    assert ModelInfo.from_metadata(plain).lesion_threshold_for("cxr") == float(
        props["lesion_threshold"]
    )
