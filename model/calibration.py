"""Temperature scaling on the validation split (Platt scaling for the lesion score), plus the
operating thresholds (OOD gate, lesion score) chosen there. Temperatures and the lesion bias are
written into the network's buffers, so the exported graph already outputs calibrated
probabilities."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from model import ood_negatives
from model.augment import Sample, augment
from model.labels import DOMAIN_OUTPUTS, UNSUPPORTED
from model.metrics import ece_binary, f1, match
from model.network import RegionNet

GRID = np.exp(np.linspace(np.log(0.25), np.log(4.0), 81))


def _fit_binary(logits: np.ndarray, labels: np.ndarray) -> float:
    x = torch.from_numpy(logits.astype(np.float64).ravel())
    y = torch.from_numpy(labels.astype(np.float64).ravel())
    nll = [float(F.binary_cross_entropy_with_logits(x / t, y)) for t in GRID]
    return float(GRID[int(np.argmin(nll))])


def _best_f1_threshold(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> tuple[float, float]:
    """The lesion operating point: the score threshold with the best F1 (and that F1)."""
    best_f1, best_thr = -1.0, 0.5
    for thr in np.linspace(0.05, 0.95, 91):
        keep = scores >= thr
        hits = int((tp & keep).sum())
        _, _, f = f1(hits, int(keep.sum()) - hits, n_gt - hits)
        if f > best_f1:
            best_f1, best_thr = f, float(thr)
    return best_thr, best_f1


def fit_lesion(logits: np.ndarray, tp: np.ndarray, n_gt: int) -> tuple[float, float, float, float]:
    """Temperature, bias, threshold and F1 for lesion scores (Platt scaling).

    The score that matters is the one on a *reported* detection (above the threshold: it goes
    into the SR as "Certainty of Finding"), so the scaling is fitted on those, not on all top-K
    candidates, most of which are easy negatives. A temperature alone could not fix them: on
    validation, reported detections averaged p 0.89 at precision 0.95. Platt scaling is monotonic,
    so the reported set is chosen first (best F1 on raw scores) and the threshold re-read in the
    calibrated score space afterwards."""
    logits = logits.astype(np.float64).ravel()
    tp = tp.astype(bool).ravel()
    raw = 1 / (1 + np.exp(-logits))
    threshold, _ = _best_f1_threshold(raw, tp, n_gt)
    kept = raw >= threshold
    scale, bias = 1.0, 0.0
    if kept.sum() >= 10 and 0 < tp[kept].sum() < kept.sum():
        x = torch.from_numpy(logits[kept])
        y = torch.from_numpy(tp[kept].astype(np.float64))
        a = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
        b = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([a, b], max_iter=200)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(a * x + b, y)
            loss.backward()
            return loss

        opt.step(closure)
        slope, offset = a.item(), b.item()  # .item(): no autograd warning
        if slope > 0:  # a negative slope would invert the ranking: keep the identity
            scale, bias = slope, offset
    temperature = 1.0 / scale
    scores = 1 / (1 + np.exp(-(logits / temperature + bias)))
    threshold, best = _best_f1_threshold(scores, tp, n_gt)
    return temperature, bias, threshold, best


def _reported_lesions(
    logits: np.ndarray, tp: np.ndarray, temperature: float, bias: float, threshold: float
) -> dict[str, float]:
    """How calibrated the detections the model will report are, on validation: their mean
    score against their precision, and the calibration error over them."""
    scores = 1 / (1 + np.exp(-(logits.astype(np.float64) / temperature + bias)))
    kept = scores >= threshold
    hits = tp.astype(bool)[kept]
    return {
        "val_lesion_reported": int(kept.sum()),
        "val_lesion_reported_precision": float(hits.mean()) if kept.any() else 0.0,
        "val_lesion_reported_mean_p": float(scores[kept].mean()) if kept.any() else 0.0,
        "val_lesion_reported_ece": ece_binary(scores[kept], hits),
    }


def fit_unsupported_bias(
    logits: np.ndarray, in_domain: np.ndarray, temperature: float, max_false_reject: float
) -> float:
    """How far to lower the 'unsupported' logit so that at most `max_false_reject` of the
    in-domain images (clean and shifted) have it on top; never raised (0 when few do).

    The threshold on the best domain cannot help an image whose top class is 'unsupported':
    1.2.0 put it on top for a third of sharpened brain MRI slices. Lowering that class's logit
    (a bias after the temperature, inside the graph) answers those; the negatives rejected
    with it are reported beside it."""
    z = logits.astype(np.float64) / temperature
    margin = z[:, UNSUPPORTED] - z[:, :UNSUPPORTED].max(1)
    worst = float(np.quantile(margin[in_domain], 1 - max_false_reject))
    return min(0.0, -worst - 1e-3)


def fit_unsupported_bias_per_group(
    logits: np.ndarray, groups: np.ndarray, temperature: float, max_false_reject: float
) -> float:
    """`fit_unsupported_bias` held in every group (domain × kind of site variation) at once:
    the lowest offset any group needs."""
    return min(
        (
            fit_unsupported_bias(logits, groups == g, temperature, max_false_reject)
            for g in np.unique(groups)
        ),
        default=0.0,
    )


def gate_threshold_per_group(
    best: np.ndarray, accepted: np.ndarray, groups: np.ndarray, max_false_reject: float
) -> float:
    """The largest OOD threshold that keeps at least 1 - `max_false_reject` of every group's
    images (those 'unsupported' is not on top of) above it."""
    taus = [
        float(np.quantile(best[(groups == g) & accepted], max_false_reject))
        for g in np.unique(groups)
        if ((groups == g) & accepted).any()
    ]
    return min(taus, default=1.0)


def choose_lesion_threshold(
    clean: tuple[np.ndarray, np.ndarray, int],
    shifted: list[tuple[np.ndarray, np.ndarray, int]],
    tolerance: float = 0.01,
) -> tuple[float, float, float]:
    """The lesion operating point over calibrated scores: the best worst-case F1 over the site
    variations among the thresholds whose clean F1 is within `tolerance` of the best clean F1.
    (A site's noise adds false detections scored like true ones: 1.3.0 on noisy validation
    abdominal CT reported 56 false detections against 6 clean.) Returns (threshold, clean F1,
    worst shifted F1)."""
    grid = np.linspace(0.05, 0.95, 91)

    def f1_at(scores: np.ndarray, tp: np.ndarray, n_gt: int, thr: float) -> float:
        keep = scores >= thr
        hits = int((tp & keep).sum())
        return f1(hits, int(keep.sum()) - hits, n_gt - hits)[2]

    clean_f1 = np.array([f1_at(*clean, t) for t in grid])
    worst = np.array([min((f1_at(*s, t) for s in shifted), default=1.0) for t in grid])
    ok = clean_f1 >= clean_f1.max() - tolerance
    i = int(np.flatnonzero(ok)[np.argmax(worst[ok])])
    return float(grid[i]), float(clean_f1[i]), float(worst[i])


def _fit_multiclass(logits: np.ndarray, labels: np.ndarray) -> float:
    x = torch.from_numpy(logits.astype(np.float64))
    y = torch.from_numpy(labels.astype(np.int64))
    nll = [float(F.cross_entropy(x / t, y)) for t in GRID]
    return float(GRID[int(np.argmin(nll))])


@torch.no_grad()
def collect(model: RegionNet, images: np.ndarray, data: dict[str, np.ndarray]) -> dict:
    """Raw logits on a set of model inputs (N, S, S) float32 in [0, 1]."""
    keys = ("domain", "presence", "abnormal", "finding")
    got: dict[str, list] = {k: [] for k in (*keys, "r2t", "r2t_y", "les_logit", "les_tp", "les_n")}
    for start in range(0, len(images), 64):
        sl = slice(start, start + 64)
        x = torch.from_numpy(images[sl]).unsqueeze(1)
        out = model.features(x)
        for k in keys:
            got[k].append(out[k].numpy())
        present = data["region_present"][sl]
        boxes = data["region_boxes"][sl]
        region_boxes = model.decode_regions(out).clamp(0, 1)
        pres_p = torch.sigmoid(out["presence"] / model.t_presence)
        q = torch.from_numpy(boxes.astype(np.float32))  # every region as a query
        ql = model.query_logits(out, region_boxes, pres_p, q).numpy()
        for i in range(len(x)):
            got["r2t"].append(ql[i][present[i]])
            got["r2t_y"].append(np.flatnonzero(present[i]))
        t_l, b_l = model.t_lesion.clone(), model.b_lesion.clone()
        model.t_lesion.fill_(1.0)
        model.b_lesion.fill_(0.0)
        lb, ls, lc = (t.numpy() for t in model.decode_lesions(out))
        model.t_lesion.copy_(t_l)
        model.b_lesion.copy_(b_l)
        for i in range(len(x)):
            gt_c = data["lesion_classes"][sl][i]
            keep = gt_c >= 0
            tp = match(lb[i], lc[i], ls[i], data["lesion_boxes"][sl][i][keep], gt_c[keep])
            s = np.clip(ls[i], 1e-6, 1 - 1e-6)
            got["les_logit"].append(np.log(s / (1 - s)))
            got["les_tp"].append(tp)
            got["les_n"].append(int(keep.sum()))
    out_np = {k: np.concatenate(got[k]) for k in (*keys, "r2t", "r2t_y", "les_logit", "les_tp")}
    out_np["les_n"] = np.array(got["les_n"])
    return out_np


def shifted_copies(val: dict[str, np.ndarray], seed: int = 2024) -> np.ndarray:
    """Every validation image once more with site variations (model.augment, always on): the
    OOD gate must answer these, not reject them."""
    rng = np.random.default_rng(seed)
    images = val["image"].astype(np.float32) / 255.0
    out = np.empty_like(images)
    for i in range(len(images)):
        sample = Sample(
            images[i].copy(),
            val["region_boxes"][i].copy(),
            val["region_present"][i].copy(),
            val["lesion_boxes"][i].copy(),
            val["lesion_classes"][i].copy(),
            tuple(int(v) for v in val["content"][i]),  # type: ignore[arg-type]
        )
        out[i] = augment(sample, DOMAIN_OUTPUTS[int(val["domain"][i])], rng, strength=1.25).image
    return out


# Site copies (model.site_copies): the most of a group (domain × kind) the gate may reject.
SITE_MAX_FALSE_REJECT = 0.01


def calibrate(
    model: RegionNet,
    val: dict[str, np.ndarray],
    log=print,
    site: dict[str, np.ndarray] | None = None,
) -> dict:
    """`site`: validation phantoms under source-space site variations (model.site_copies);
    with them the OOD gate keeps ≥ 99 % of every domain × kind, and the lesion threshold is
    chosen for the worst kind as well as the clean images."""
    rng = np.random.default_rng(12345)
    images = val["image"].astype(np.float32) / 255.0
    shifted = shifted_copies(val) if "content" in val else images[:0]
    n_neg = max(len(images) // 4, 8)
    s = images.shape[-1]
    negs = np.stack(
        [
            ood_negatives.synthetic(rng, s)
            if i % 2
            else ood_negatives.corrupted(
                rng, images[i % len(images)], images[(i * 7 + 3) % len(images)]
            )
            for i in range(n_neg)
        ]
    )
    c = collect(model, images, val)
    neg_dom, shift_dom = [], []
    with torch.no_grad():
        for start in range(0, n_neg, 64):
            neg_dom.append(
                model.features(torch.from_numpy(negs[start : start + 64]).unsqueeze(1))[
                    "domain"
                ].numpy()
            )
        for start in range(0, len(shifted), 64):
            shift_dom.append(
                model.features(torch.from_numpy(shifted[start : start + 64]).unsqueeze(1))[
                    "domain"
                ].numpy()
            )
    cs = None
    site_dom = np.zeros((0, c["domain"].shape[1]), np.float32)
    site_labels = np.zeros(0, np.int64)
    if site is not None:
        cs = collect(model, site["image"].astype(np.float32) / 255.0, site)
        site_dom, site_labels = cs["domain"], site["domain"]
    # in-domain = the clean split, its shifted copies and the site copies; out-of-domain = the
    # negatives
    dom_logits = np.concatenate([c["domain"], *shift_dom, site_dom, *neg_dom])
    dom_labels = np.concatenate(
        [val["domain"], val["domain"][: len(shifted)], site_labels, np.full(n_neg, UNSUPPORTED)]
    )
    n_in = len(images) + len(shifted)
    site_rows = slice(n_in, n_in + len(site_labels))
    temps = {
        "domain": _fit_multiclass(dom_logits, dom_labels),
        "presence": _fit_binary(c["presence"], val["region_present"]),
        "abnormal": _fit_binary(c["abnormal"], val["abnormal"]),
        "finding": _fit_binary(c["finding"], val["findings"]),
        "lesion": 1.0,  # fitted below, on the detections the model reports
        "r2t": _fit_multiclass(c["r2t"], c["r2t_y"]),
    }
    for k, t in temps.items():
        getattr(model, f"t_{k}").fill_(t)
    in_dist = dom_labels != UNSUPPORTED
    unsupported_bias = fit_unsupported_bias(dom_logits, in_dist, temps["domain"], 0.005)
    if site is not None:
        groups = site["domain"] * 100 + site["kind"]
        unsupported_bias = min(
            unsupported_bias,
            fit_unsupported_bias_per_group(
                site_dom, groups, temps["domain"], SITE_MAX_FALSE_REJECT
            ),
        )
    model.b_domain.zero_()
    model.b_domain[UNSUPPORTED] = unsupported_bias
    # OOD gate: reject when 'unsupported' wins or the best domain is below tau; tau is the
    # largest value that still keeps ≥ 99.5% of in-distribution validation images
    probs = torch.softmax(
        torch.from_numpy(dom_logits) / temps["domain"] + model.b_domain.double(), 1
    ).numpy()
    best = probs[:, :UNSUPPORTED].max(1)
    accepted = probs.argmax(1) != UNSUPPORTED
    tau = float(np.quantile(best[in_dist & accepted], 0.005))
    if site is not None:
        tau = min(
            tau,
            gate_threshold_per_group(
                best[site_rows], accepted[site_rows], groups, SITE_MAX_FALSE_REJECT
            ),
        )
    tau = float(np.clip(tau, 0.3, 0.9))
    rejects = (~accepted) | (best < tau)
    temps["lesion"], lesion_bias, best_thr, best_f1 = fit_lesion(
        c["les_logit"], c["les_tp"], int(c["les_n"].sum())
    )
    model.t_lesion.fill_(temps["lesion"])
    model.b_lesion.fill_(lesion_bias)
    site_result: dict = {}
    if cs is not None:

        def scored(got: dict, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
            k = got["les_logit"].reshape(len(rows), -1)[rows].ravel()
            p = 1 / (1 + np.exp(-(k.astype(np.float64) / temps["lesion"] + lesion_bias)))
            tp = got["les_tp"].reshape(len(rows), -1)[rows].ravel().astype(bool)
            return p, tp, int(got["les_n"][rows].sum())

        every = np.ones(len(images), bool)
        per_kind = [scored(cs, site["kind"] == k) for k in np.unique(site["kind"])]
        best_thr, best_f1, worst_f1 = choose_lesion_threshold(scored(c, every), per_kind)
        site_rejects = rejects[site_rows]
        site_result = {
            "val_site_images": int(len(site_labels)),
            "val_site_lesion_f1_worst_kind": worst_f1,
            "val_site_false_reject": float(site_rejects.mean()),
            "val_site_false_reject_worst_group": max(
                float(site_rejects[groups == g].mean()) for g in np.unique(groups)
            ),
        }
    reported = _reported_lesions(
        c["les_logit"], c["les_tp"], temps["lesion"], lesion_bias, best_thr
    )
    result = {
        "temperatures": temps,
        "lesion_bias": lesion_bias,
        "unsupported_bias": unsupported_bias,
        **reported,
        "ood_threshold": tau,
        "lesion_threshold": best_thr,
        "val_lesion_f1": best_f1,
        "val_ood_reject_negatives": float(rejects[~in_dist].mean()),
        "val_ood_false_reject": float(rejects[in_dist].mean()),
        "val_ood_false_reject_shifted": float(
            rejects[len(images) : len(images) + len(shifted)].mean()
        )
        if len(shifted)
        else 0.0,
        "val_r2t_acc": float((c["r2t"].argmax(1) == c["r2t_y"]).mean()),
        "val_domain_acc": float((probs[in_dist].argmax(1) == dom_labels[in_dist]).mean()),
        **site_result,
    }
    log(f"calibration: {result}")
    return result
