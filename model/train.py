"""Train the reference region-aware model from scratch on phantoms (CPU recipe).

    python -m model.train            # full recipe (~40 min on 2 cores) → model/runs/ref/
    python -m model.train --smoke    # tiny, < 2 min: proves the loop runs and the loss falls

The learning-rate schedule runs on wall-clock progress through a time budget, so the recipe
finishes on time on a shared machine; the step count reached is recorded in the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model import site_copies
from model.batches import make_batch
from model.calibration import calibrate
from model.labels import DOMAIN_OUTPUTS, FINDING_CODES, REGION_CODES
from model.losses import lesion_losses, region_losses
from model.network import N_DOMAIN_OUTPUTS, NetConfig, RegionNet
from model.phantoms.types import DOMAINS
from model.training_data import load_or_build
from shared.vocab import load_vocab

RUNS = Path(__file__).resolve().parent / "runs"


@dataclass
class Recipe:
    name: str = "ref"
    input_size: int = 256
    per_domain: int = 5000
    val_per_domain: int = 400
    max_side: int = 384
    batch: int = 32
    minutes: float = 38.0
    max_steps: int = 1_000_000
    lr: float = 3e-3
    weight_decay: float = 1e-4
    neg_fraction: float = 0.15
    augment_fraction: float = 0.7  # share of in-domain images given site variations
    n_queries: int = 8
    threads: int = 2
    seed: int = 0
    calibrate: bool = True
    init: str | None = None  # torch weights to start from (model/artifacts/*.pt format)
    # how often each domain's images are drawn (DOMAINS order; equal = every image once an
    # epoch): fine-tuning draws a weak domain more often without rendering more phantoms
    domain_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    lesion_weight: float = 1.0  # multiplies the lesion detection losses
    # extra abdominal CT images where lesions are confused or misplaced (model.hard_abdomen),
    # added to the training set
    hard_abd: int = 0
    # how often the site variations hit each domain's augmented images (DOMAINS order; 1 = the
    # rates in model.augment): more for a domain weak under noise, blur or low dose
    augment_strength: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    # validation phantoms per domain under source-space site variations (model.site_copies)
    # for the calibration's OOD gate and lesion threshold; 0 = none
    site_per_domain: int = 100


SMOKE = Recipe(
    name="smoke",
    input_size=128,
    per_domain=16,
    val_per_domain=8,
    max_side=160,
    batch=16,
    minutes=1.5,  # a cap only: the smoke run is step-bound so it means the same on a busy CPU
    max_steps=40,
    lr=2e-3,
    calibrate=False,
    site_per_domain=0,
)

LOSS_WEIGHTS = {
    "domain": 1.0,
    "presence": 1.0,
    "abnormal": 1.0,
    "finding": 1.0,
    "r2t": 1.0,
    "region_hm": 1.0,
    "region_l1": 5.0,
    "region_giou": 2.0,
    "lesion_hm": 1.0,
    "lesion_wh": 1.0,
    "lesion_off": 1.0,
}


def compute_losses(model: RegionNet, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = model.features(batch["image"])
    losses = {
        "domain": F.cross_entropy(out["domain"], batch["domain"]),
        "presence": F.binary_cross_entropy_with_logits(
            out["presence"], batch["region_present"].float()
        ),
        "abnormal": F.binary_cross_entropy_with_logits(out["abnormal"], batch["abnormal"].float()),
        "finding": F.binary_cross_entropy_with_logits(out["finding"], batch["findings"].float()),
    }
    losses.update(region_losses(out, batch["region_boxes"], batch["region_present"]))
    losses.update(
        lesion_losses(out, batch["lesion_boxes"], batch["lesion_classes"], model.cfg.n_findings)
    )
    region_boxes = model.decode_regions(out)
    q = model.query_logits(
        out, region_boxes, torch.sigmoid(out["presence"]).detach(), batch["query_boxes"]
    )
    labels = batch["query_labels"]
    if (labels >= 0).any():
        losses["r2t"] = F.cross_entropy(q.reshape(-1, q.shape[-1]), labels.reshape(-1))
    else:
        losses["r2t"] = q.sum() * 0
    return losses


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _init_from(model: RegionNet, path: Path, log) -> None:
    """Start from earlier weights (same architecture); calibration buffers go back to identity
    because the new run is calibrated afresh."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if tuple(blob["net"]["widths"]) != model.cfg.widths or blob["net"]["input_size"] != (
        model.cfg.input_size
    ):
        raise ValueError(f"{path}: network {blob['net']} differs from {model.cfg}")
    state = dict(blob["state_dict"])
    for name in ("domain", "presence", "abnormal", "finding", "lesion", "r2t"):
        state[f"t_{name}"] = torch.ones(())
    state["b_lesion"] = torch.zeros(())
    state["b_domain"] = torch.zeros(N_DOMAIN_OUTPUTS)
    model.load_state_dict(state)
    log(f"initialised from {path}")


def epoch_order(
    domains: np.ndarray, weights: tuple[float, ...], rng: np.random.Generator
) -> np.ndarray:
    """The order images are drawn in for one pass: a permutation when every domain weighs the
    same, otherwise as many draws (with replacement) in proportion to the domain's weight."""
    n = len(domains)
    if len(set(weights)) == 1:
        return rng.permutation(n)
    w = np.asarray(weights, np.float64)[domains]
    return rng.choice(n, size=n, replace=True, p=w / w.sum())


def parse_domain_weights(text: str) -> tuple[float, ...]:
    """'abd_ct=2,brain_mr=1.5' → weights in DOMAINS order (unnamed domains weigh 1)."""
    weights = dict.fromkeys(DOMAINS, 1.0)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in weights or not value:
            raise ValueError(f"--domain-weights: expected DOMAIN=WEIGHT with a domain of {DOMAINS}")
        weights[name] = float(value)
        if weights[name] <= 0:
            raise ValueError(f"--domain-weights: {name} must weigh more than 0")
    return tuple(weights[d] for d in DOMAINS)


def train(recipe: Recipe, log=print) -> dict:
    # The code that trains is the checkout at the start: commits made while a long run goes on
    # must not be recorded as its training commit.
    commit = git_commit()
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    workers = 1 if recipe.per_domain < 50 or recipe.threads < 2 else 2
    data = load_or_build("train", recipe.per_domain, recipe.input_size, recipe.max_side, workers)
    if recipe.hard_abd:
        hard = load_or_build(
            "hard_abd", recipe.hard_abd, recipe.input_size, recipe.max_side, workers
        )
        data = {k: np.concatenate([data[k], hard[k]]) for k in data}
        log(f"training set: {len(data['image'])} images ({recipe.hard_abd} extra abd_ct)")
    cfg = NetConfig(
        input_size=recipe.input_size, n_regions=len(REGION_CODES), n_findings=len(FINDING_CODES)
    )
    model = RegionNet(cfg)
    if recipe.init:
        _init_from(model, Path(recipe.init), log)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    n = len(data["image"])
    budget = recipe.minutes * 60
    t0 = time.time()
    history: list[float] = []
    step = 0
    order = epoch_order(data["domain"], recipe.domain_weights, rng)
    pos = 0
    model.train()
    while step < recipe.max_steps:
        progress = max((time.time() - t0) / budget, step / recipe.max_steps)
        if progress >= 1.0:
            break
        warm = min(1.0, (step + 1) / min(100, max(recipe.max_steps // 5, 1)))
        lr = recipe.lr * warm * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in opt.param_groups:
            group["lr"] = lr
        if pos + recipe.batch > n:
            order, pos = epoch_order(data["domain"], recipe.domain_weights, rng), 0
        idx = np.sort(order[pos : pos + recipe.batch])
        pos += recipe.batch
        batch = make_batch(
            data,
            idx,
            rng,
            recipe.neg_fraction,
            recipe.n_queries,
            recipe.augment_fraction,
            tuple(recipe.augment_strength),
        )
        losses = compute_losses(model, batch)
        total = sum(
            LOSS_WEIGHTS[k] * (recipe.lesion_weight if k.startswith("lesion") else 1.0) * v
            for k, v in losses.items()
        )
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        history.append(float(total.detach()))
        step += 1
        if step % 50 == 0 or step <= 3:
            parts = " ".join(f"{k}={float(v.detach()):.3f}" for k, v in losses.items())
            log(
                f"step {step} t={time.time() - t0:.0f}s lr={lr:.2e} loss={float(total.detach()):.3f} "
                f"({parts})"
            )
    model.eval()
    result = {
        "recipe": asdict(recipe),
        "net": asdict(cfg),
        "steps": step,
        "train_seconds": round(time.time() - t0, 1),
        "loss_first": float(np.mean(history[:5])),
        "loss_last": float(np.mean(history[-5:])),
        "git_commit": commit,
        "vocab_version": load_vocab().version,
        "region_codes": list(REGION_CODES),
        "finding_codes": list(FINDING_CODES),
        "domain_outputs": list(DOMAIN_OUTPUTS),
    }
    if recipe.calibrate:
        val = load_or_build(
            "val", recipe.val_per_domain, recipe.input_size, recipe.max_side, workers
        )
        site = site_copies.load_or_build(recipe.site_per_domain, recipe.input_size, log=log)
        result["calibration"] = calibrate(model, val, log=log, site=site)
    out_dir = RUNS / recipe.name
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "meta": result}, out_dir / "model.pt")
    (out_dir / "meta.json").write_text(json.dumps(result, indent=1))
    log(
        f"saved {out_dir / 'model.pt'}: {step} steps, loss {result['loss_first']:.3f} → "
        f"{result['loss_last']:.3f}"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny run that proves the loss falls")
    ap.add_argument("--minutes", type=float, help="wall-clock training budget")
    ap.add_argument("--per-domain", type=int, help="training images per domain")
    ap.add_argument("--name", help="run folder under model/runs/")
    ap.add_argument("--threads", type=int, help="torch threads (and 1 cache-building process)")
    ap.add_argument("--init", help="start from these torch weights (fine-tuning)")
    ap.add_argument("--lr", type=float, help="peak learning rate")
    ap.add_argument("--lesion-weight", type=float, help="multiplies the lesion losses")
    ap.add_argument("--hard-abd", type=int, help="extra abdominal CT images (model.hard_abdomen)")
    ap.add_argument(
        "--domain-weights", type=parse_domain_weights, help="e.g. abd_ct=2.5 (others weigh 1)"
    )
    ap.add_argument(
        "--augment-strength",
        type=parse_domain_weights,
        help="e.g. abd_ct=1.5: site variations that much more often on that domain",
    )
    args = ap.parse_args(argv)
    recipe = SMOKE if args.smoke else Recipe()
    if args.minutes is not None:
        recipe.minutes = args.minutes
    if args.per_domain is not None:
        recipe.per_domain = args.per_domain
    if args.name:
        recipe.name = args.name
    if args.threads is not None:
        recipe.threads = args.threads
    if args.init:
        recipe.init = args.init
    if args.lr is not None:
        recipe.lr = args.lr
    if args.lesion_weight is not None:
        recipe.lesion_weight = args.lesion_weight
    if args.domain_weights is not None:
        recipe.domain_weights = args.domain_weights
    if args.hard_abd is not None:
        recipe.hard_abd = args.hard_abd
    if args.augment_strength is not None:
        recipe.augment_strength = args.augment_strength
    result = train(recipe, log=lambda s: print(s, flush=True))
    fell = result["loss_last"] < result["loss_first"]
    print(
        json.dumps(
            {
                "loss_first": result["loss_first"],
                "loss_last": result["loss_last"],
                "steps": result["steps"],
                "loss_fell": fell,
            }
        )
    )
    return 0 if fell else 1


if __name__ == "__main__":
    sys.exit(main())
