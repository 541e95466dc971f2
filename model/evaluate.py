"""Evaluate the exported model (through ONNX Runtime, exactly as the worker runs it) on the
held-out phantom test split, with MedRegA's task definitions, plus calibration and OOD.

    python -m model.evaluate [--onnx model/artifacts/medrega-ref.onnx] [--split test]
                             [--grid model/artifacts/test_grid.png]
    python -m model.evaluate --shifts [--shift-scale 0.5] [--shift-grid PNG] [--markdown MD]

Each image reaches the runtime as (pixels, header window, DICOM modality of its domain), as
the worker hands it over.

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
  runtime answers 'unsupported'.
- in_domain_false_reject: share of test phantoms the runtime answers 'unsupported'.
- --shifts: the same metrics on the same test studies under each variation of model.shifts
  (clean beside them, per domain); shift_worst_* are the worst value over every shift.
The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from model import shifts as shift_lib
from model.augment import MODALITY
from model.metrics import ece_binary, f1, iou, match
from model.ood_inputs import noise_images, pydicom_images_with_modality
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
    t.per_domain[domain]["rejected"].append(not pred.supported)
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


Example = tuple[PhantomStudy, PhantomImage, ImagePrediction]
CLEAN = "clean"


def _scaled(img: PhantomImage, scale: float) -> PhantomImage:
    if scale == 1.0:
        return img

    def sb(box):
        return tuple(float(v) * scale for v in box)

    return replace(
        img,
        regions=[replace(r, box=sb(r.box)) for r in img.regions],
        findings=[replace(f, box=sb(f.box)) for f in img.findings],
    )


def _variant(
    name: str, domain: str, img: PhantomImage, rng: np.random.Generator
) -> tuple[tuple, PhantomImage] | None:
    """What the runtime is handed under a variant, and the ground truth in its pixels (the
    shifted pixels ride along in the returned image, for the grid)."""
    if name == CLEAN:
        return (img.pixels, *img.window, MODALITY[domain]), img
    got = shift_lib.apply(name, domain, img, rng)
    if got is None:
        return None
    (pixels, c, w, modality), scale = got
    return (pixels, c, w, modality), replace(_scaled(img, scale), pixels=pixels, window=(c, w))


GRID_ABNORMAL, GRID_NORMAL = 3, 4  # what the grids draw per domain (model.grid)


def _wanted_for_grid(kept: list[Example], study: PhantomStudy, im: PhantomImage) -> bool:
    """Keep only the few images the grids draw: each holds its (shifted) full-resolution
    pixels, and keeping 60 X-rays per variation took the shifted run past 14 GB."""
    if not (im.findings or len(study.images) == 1 or im.slice_index % 7 == 3):
        return False
    same = [
        e for e in kept if e[0].domain == study.domain and bool(e[1].findings) == bool(im.findings)
    ]
    return len(same) < (GRID_ABNORMAL if im.findings else GRID_NORMAL)


def evaluate_studies(
    model: ReferenceModel,
    split: Split,
    studies: dict[str, int],
    log=print,
    variants: tuple[str, ...] = (CLEAN,),
) -> tuple[dict[str, Tally], dict[str, list[Example]]]:
    """Every test study once per variant (the clean split and/or shifts); one tally each."""
    tallies = {v: Tally() for v in variants}
    examples: dict[str, list[Example]] = {v: [] for v in variants}
    for domain in DOMAINS:
        t0 = time.time()
        n_img = 0
        for seed in seeds(split, studies[domain]):
            study = generate_study(domain, seed)
            truth = {f.code for f in study.findings}
            for k, variant in enumerate(variants):
                rng = np.random.default_rng([seed, k, 77])
                t = tallies[variant]
                predicted: set[str] = set()
                applied = False
                for start in range(0, len(study.images), 16):
                    chunk = []
                    for im in study.images[start : start + 16]:
                        got = _variant(variant, domain, im, rng)
                        if got is not None:
                            chunk.append(got)
                    if not chunk:
                        continue
                    applied = True
                    queries = [[r.box for r in gt.regions] for _, gt in chunk]
                    preds = model.predict([item for item, _ in chunk], queries)
                    for (_, im), pred in zip(chunk, preds, strict=True):
                        predicted |= score_image(t, model, domain, im, pred)
                        for q, r in zip(pred.queries, im.regions, strict=False):
                            ok = q.region_code == r.code
                            t.r2t.append(ok)
                            t.per_domain[domain]["r2t"].append(ok)
                        if _wanted_for_grid(examples[variant], study, im):
                            examples[variant].append((study, im, pred))
                    n_img += len(chunk)
                if applied:
                    t.study_tp += len(predicted & truth)
                    t.study_fp += len(predicted - truth)
                    t.study_fn += len(truth - predicted)
                    t.per_domain[domain]["study_tp"].append(len(predicted & truth))
                    t.per_domain[domain]["study_fp"].append(len(predicted - truth))
                    t.per_domain[domain]["study_fn"].append(len(truth - predicted))
        log(
            f"{domain}: {studies[domain]} studies x {len(variants)} variants, {n_img} images "
            f"in {time.time() - t0:.0f}s"
        )
    return tallies, examples


def evaluate_ood(model: ReferenceModel, log=print) -> dict[str, float]:
    """Non-phantom inputs, each on the path the worker would give it: pydicom's files with
    their own Modality, noise once as display values and once claiming to be CT and MR."""
    items = [(n, a, c, w, m) for n, a, c, w, m in pydicom_images_with_modality()]
    noise = [(n, a, c, w, None) for n, a, c, w in noise_images(60)]
    noise += [
        (f"{n}-as-{m}", a, c, w, m)
        for (n, a, c, w), m in zip(noise_images(20, seed=8), ["CT", "MR"] * 10, strict=True)
    ]
    rows = []
    for name, arr, c, w, modality in items + noise:
        pred = model.predict([(arr, c, w, modality)])[0]
        # the network's own verdict, without the runtime's minimum-size rule
        x, _ = model.preprocess(arr, c, w, modality)
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
        _, _, df = f1(sum(d["study_tp"]), sum(d["study_fp"]), sum(d["study_fn"]))
        out[f"{domain}_t2r_acc50"] = float((v >= 0.5).mean())
        out[f"{domain}_r2t_acc"] = float(np.mean(d["r2t"]))
        out[f"{domain}_lesion_f1"] = dl
        out[f"{domain}_finding_f1"] = df
        out[f"{domain}_false_reject"] = float(np.mean(d["rejected"]))
    return out


SHIFT_KEYS = ("t2r_acc50", "t2r_miou", "r2t_acc", "lesion_f1", "finding_f1")


def shift_summary(clean: dict[str, float], shifted: dict[str, dict[str, float]]) -> dict:
    """The worst value of each metric over every shift (false rejects: the highest)."""
    out: dict[str, float] = {}
    for k in SHIFT_KEYS:
        out[f"shift_worst_{k}"] = min(r[k] for r in shifted.values())
    out["shift_worst_false_reject"] = max(r["in_domain_false_reject"] for r in shifted.values())
    for domain in DOMAINS:
        vals = [r[f"{domain}_lesion_f1"] for r in shifted.values() if f"{domain}_lesion_f1" in r]
        if vals:
            out[f"shift_worst_{domain}_lesion_f1"] = min(vals)
    out["clean_false_reject"] = clean["in_domain_false_reject"]
    return out


def markdown_tables(clean: dict[str, float], shifted: dict[str, dict[str, float]]) -> str:
    """Overall and per-domain tables, clean first (what the model card shows)."""
    rows = {"clean": clean, **shifted}
    lines = [
        "| variation | T2R acc@0.5 | T2R mIoU | R2T acc | lesion F1 | finding F1 | rejected |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['t2r_acc50']:.3f} | {r['t2r_miou']:.3f} | {r['r2t_acc']:.3f} | "
            f"{r['lesion_f1']:.3f} | {r['finding_f1']:.3f} | {r['in_domain_false_reject']:.3f} |"
        )
    lines += [
        "",
        "Per domain: lesion F1 / T2R acc@0.5 / rejected (— where a shift does not apply)",
        "",
    ]
    lines.append("| variation | " + " | ".join(DOMAINS) + " |")
    lines.append("|---|" + "---|" * len(DOMAINS))
    for name, r in rows.items():
        cells = []
        for d in DOMAINS:
            if f"{d}_lesion_f1" not in r:
                cells.append("—")
                continue
            cells.append(
                f"{r[f'{d}_lesion_f1']:.2f} / {r[f'{d}_t2r_acc50']:.2f} / "
                f"{r[f'{d}_false_reject']:.2f}"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--onnx", type=Path, default=DEFAULT_ONNX)
    ap.add_argument("--split", default="test", choices=["val", "test"])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the number of studies")
    ap.add_argument("--grid", type=Path, help="write a PNG grid of predictions here")
    ap.add_argument("--shifts", action="store_true", help="also evaluate under model.shifts")
    ap.add_argument("--shift-scale", type=float, default=0.5, help="studies for --shifts")
    ap.add_argument("--shift-grid", type=Path, help="PNG of shifted examples with boxes")
    ap.add_argument("--markdown", type=Path, help="write the clean/shifted tables here")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    model = ReferenceModel.load(args.onnx, threads=args.threads)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    scale = args.shift_scale if args.shifts else args.scale
    studies = {d: max(1, round(n * scale)) for d, n in STUDIES.items()}
    variants = (CLEAN, *shift_lib.SHIFTS) if args.shifts else (CLEAN,)
    tallies, examples = evaluate_studies(model, args.split, studies, log, variants)
    result = summarise(tallies[CLEAN], model)
    result.update(evaluate_ood(model, log))
    if args.grid:
        from model.grid import draw_grid

        draw_grid(examples[CLEAN], model, args.grid)
        log(f"wrote {args.grid}")
    keys = ("t2r_acc50", "t2r_miou", "r2t_acc", "lesion_f1", "finding_f1", "ece", "ood_reject")
    keys += tuple(f"{d}_lesion_f1" for d in DOMAINS) + ("in_domain_false_reject",)
    line = {k: round(result[k], 4) for k in keys}
    if args.shifts:
        shifted = {v: summarise(tallies[v], model) for v in variants if v != CLEAN}
        result["shifts"] = shifted
        summary = shift_summary(result, shifted)
        result.update(summary)
        line.update({k: round(v, 4) for k, v in summary.items()})
        line["shift_studies"] = studies  # type: ignore[assignment]
        tables = markdown_tables(result, shifted)
        log(tables)
        if args.markdown:
            args.markdown.write_text(tables)
        if args.shift_grid:
            from model.grid import draw_shift_grid

            draw_shift_grid(examples, args.shift_grid)
            log(f"wrote {args.shift_grid}")
    log(json.dumps(result, indent=1))
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
