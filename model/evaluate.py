"""Evaluate the exported model (through ONNX Runtime, exactly as the worker runs it) on the
held-out phantom test split, with MedRegA's task definitions, plus calibration and OOD.

    python -m model.evaluate [--onnx model/artifacts/medrega-ref.onnx] [--split test]
                             [--grid model/artifacts/test_grid.png]

Definitions (per image unless stated):
- t2r_acc50 / t2r_miou: for every ground-truth region on an image, the model's box for that
  region name; accuracy = share with IoU ≥ 0.5, mean IoU over the same set.
- r2t_acc: every ground-truth region box is a query; correct when the top region is its name.
- lesion P/R/F1: detections with score ≥ the model's lesion threshold (its own domain's
  findings), greedy one-to-one matching at IoU ≥ 0.5 within a finding class.
- finding_f1: per study, the set of finding codes predicted (a code counts when some image of
  the study has a detection of it) against the study's true findings; micro F1.
- ece: the LARGEST of the per-head expected calibration errors (15 bins): domain top-1,
  region presence, region abnormality, image-level finding probability, lesion score.
- ood_reject: share of non-phantom inputs (distinct images bundled in pydicom + noise) that the
  runtime answers 'unsupported'. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from model.metrics import ece_binary, f1, iou, match
from model.ood_inputs import noise_images, pydicom_images
from model.phantoms.generator import generate_study
from model.phantoms.splits import Split, seeds
from model.phantoms.types import DOMAINS, PhantomImage, PhantomStudy
from shared.inference.reference_onnx import ImagePrediction, ReferenceModel

ROOT = Path(__file__).resolve().parent
DEFAULT_ONNX = ROOT / "artifacts" / "medrega-ref.onnx"
STUDIES = {"cxr": 150, "chest_ct": 24, "abd_ct": 24, "brain_mr": 24}


class Tally:
    def __init__(self) -> None:
        self.t2r_iou: list[float] = []
        self.r2t: list[bool] = []
        self.tp = self.fp = self.fn = 0
        self.study_tp = self.study_fp = self.study_fn = 0
        self.per_domain: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        self.cal: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
        self.images = 0
        self.false_reject = 0

    def add_cal(self, head: str, probs, labels) -> None:
        self.cal[head][0].extend(np.ravel(probs).tolist())
        self.cal[head][1].extend(np.ravel(labels).tolist())


def score_image(
    t: Tally, model: ReferenceModel, domain: str, img: PhantomImage, pred: ImagePrediction
) -> set[str]:
    info = model.info
    t.images += 1
    dom_vec = [pred.domain_probs.get(d, 0.0) for d in info.domain_outputs]
    t.add_cal("domain", [max(dom_vec)], [info.domain_outputs[int(np.argmax(dom_vec))] == domain])
    if not pred.supported:
        t.false_reject += 1
    gt_regions = {r.code: r.box for r in img.regions}
    domain_regions = [r for r in pred.all_regions if r.code in model._domain_regions[domain]]
    for r in domain_regions:
        t.add_cal("presence", [r.presence], [r.code in gt_regions])
        abn = any(f.region_code == r.code for f in img.findings)
        t.add_cal("abnormal", [r.abnormal], [abn])
        if r.code in gt_regions:
            v = float(iou(np.array(r.box), np.array(gt_regions[r.code]))[0, 0])
            t.t2r_iou.append(v)
            t.per_domain[domain]["t2r"].append(v)
    gt_codes = {f.code for f in img.findings}
    for code in model._domain_findings[domain]:
        p = pred.finding_probs.get(code)
        if p is None:  # unsupported: the runtime gives nothing, score against 0
            p = 0.0
        t.add_cal("finding", [p], [code in gt_codes])
    # lesions: decode with the model's threshold, only for supported domains
    lesions = pred.lesions
    pb = np.array([les.box for les in lesions]).reshape(-1, 4)
    pc = np.array([les.finding_code for les in lesions])
    ps = np.array([les.score for les in lesions])
    gb = np.array([f.box for f in img.findings]).reshape(-1, 4)
    gc = np.array([f.code for f in img.findings])
    tp = match(pb, pc, ps, gb, gc)
    t.tp += int(tp.sum())
    t.fp += int((~tp).sum())
    t.fn += len(gb) - int(tp.sum())
    t.per_domain[domain]["lesion_tp"].append(int(tp.sum()))
    t.per_domain[domain]["lesion_fp"].append(int((~tp).sum()))
    t.per_domain[domain]["lesion_fn"].append(len(gb) - int(tp.sum()))
    t.add_cal("lesion", ps, tp)
    return {les.finding_code for les in lesions}


def evaluate_studies(
    model: ReferenceModel, split: Split, studies: dict[str, int], log=print
) -> tuple[Tally, list[tuple[PhantomStudy, PhantomImage, ImagePrediction]]]:
    t = Tally()
    examples = []
    for domain in DOMAINS:
        t0 = time.time()
        n_img = 0
        for seed in seeds(split, studies[domain]):
            study = generate_study(domain, seed)
            predicted: set[str] = set()
            for start in range(0, len(study.images), 16):
                chunk = study.images[start : start + 16]
                queries = [[r.box for r in im.regions] for im in chunk]
                preds = model.predict([(im.pixels, *im.window) for im in chunk], queries)
                for im, pred in zip(chunk, preds, strict=True):
                    predicted |= score_image(t, model, domain, im, pred)
                    for q, r in zip(pred.queries, im.regions, strict=False):
                        ok = q.region_code == r.code
                        t.r2t.append(ok)
                        t.per_domain[domain]["r2t"].append(ok)
                    wanted = im.findings or len(study.images) == 1 or im.slice_index % 7 == 3
                    if wanted and sum(e[0].domain == domain for e in examples) < 60:
                        examples.append((study, im, pred))
                n_img += len(chunk)
            truth = {f.code for f in study.findings}
            t.study_tp += len(predicted & truth)
            t.study_fp += len(predicted - truth)
            t.study_fn += len(truth - predicted)
        log(f"{domain}: {studies[domain]} studies, {n_img} images in {time.time() - t0:.0f}s")
    return t, examples


def evaluate_ood(model: ReferenceModel, log=print) -> dict[str, float]:
    items = pydicom_images()
    noise = noise_images(60)
    rows = []
    for name, arr, c, w in items + noise:
        pred = model.predict([(arr, c, w)])[0]
        # the network's own verdict, without the runtime's minimum-size rule
        x, _ = model.preprocess(arr, c, w)
        probs = model.run_raw(x[None, None])["domain_probs"][0]
        n_dom = len(model.info.domain_outputs) - 1
        net_reject = bool(probs.argmax() == n_dom or probs[:n_dom].max() < model.info.ood_threshold)
        rows.append((name, not pred.supported, net_reject, pred.domain))
    misses = [(n, d) for n, rej, _, d in rows if not rej]
    if misses:
        log(f"OOD inputs accepted: {misses}")
    pyd = rows[: len(items)]
    return {
        "ood_reject": float(np.mean([r[1] for r in rows])),
        "ood_reject_network_only": float(np.mean([r[2] for r in rows])),
        "ood_reject_pydicom": float(np.mean([r[1] for r in pyd])),
        "ood_reject_pydicom_network_only": float(np.mean([r[2] for r in pyd])),
        "ood_reject_noise": float(np.mean([r[1] for r in rows[len(items) :]])),
        "ood_n_pydicom": len(items),
        "ood_n_noise": len(noise),
    }


def summarise(t: Tally, model: ReferenceModel) -> dict[str, float]:
    lp, lr, lf = f1(t.tp, t.fp, t.fn)
    _, _, sf = f1(t.study_tp, t.study_fp, t.study_fn)
    eces = {}
    for head, (p, y) in t.cal.items():
        eces[head] = ece_binary(np.array(p), np.array(y, float))
    ious = np.array(t.t2r_iou)
    out = {
        "t2r_acc50": float((ious >= 0.5).mean()),
        "t2r_miou": float(ious.mean()),
        "r2t_acc": float(np.mean(t.r2t)),
        "lesion_precision": lp,
        "lesion_recall": lr,
        "lesion_f1": lf,
        "finding_f1": sf,
        "ece": max(eces.values()),
        **{f"ece_{k}": v for k, v in eces.items()},
        "in_domain_false_reject": t.false_reject / max(t.images, 1),
        "images": t.images,
    }
    for domain, d in t.per_domain.items():
        v = np.array(d["t2r"])
        _, _, dl = f1(sum(d["lesion_tp"]), sum(d["lesion_fp"]), sum(d["lesion_fn"]))
        out[f"{domain}_t2r_acc50"] = float((v >= 0.5).mean())
        out[f"{domain}_r2t_acc"] = float(np.mean(d["r2t"]))
        out[f"{domain}_lesion_f1"] = dl
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--onnx", type=Path, default=DEFAULT_ONNX)
    ap.add_argument("--split", default="test", choices=["val", "test"])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the number of studies")
    ap.add_argument("--grid", type=Path, help="write a PNG grid of predictions here")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    model = ReferenceModel.load(args.onnx, threads=args.threads)
    studies = {d: max(1, round(n * args.scale)) for d, n in STUDIES.items()}
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    tally, examples = evaluate_studies(model, args.split, studies, log)
    result = summarise(tally, model)
    result.update(evaluate_ood(model, log))
    if args.grid:
        from model.grid import draw_grid

        draw_grid(examples, model, args.grid)
        log(f"wrote {args.grid}")
    log(json.dumps(result, indent=1))
    keys = ("t2r_acc50", "t2r_miou", "r2t_acc", "lesion_f1", "finding_f1", "ece", "ood_reject")
    print(json.dumps({k: round(result[k], 4) for k in keys}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
