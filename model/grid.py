"""A PNG grid of test phantoms per domain: true boxes green, predicted regions red, predicted
lesions orange (with scores)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from model.phantoms.types import DOMAINS, PhantomImage, PhantomStudy
from shared.inference.reference_onnx import ImagePrediction, ReferenceModel

TILE = 360


def _tile(img: PhantomImage, pred: ImagePrediction, title: str) -> Image.Image:
    c, w = img.window
    a = np.clip((img.pixels - (c - w / 2)) / w, 0, 1) * 255
    im = Image.fromarray(a.astype(np.uint8)).convert("RGB")
    f = TILE / max(im.size)
    im = im.resize((max(1, int(im.size[0] * f)), max(1, int(im.size[1] * f))))
    canvas = Image.new("RGB", (TILE, TILE + 16))
    canvas.paste(im, (0, 16))
    d = ImageDraw.Draw(canvas)

    def rect(box, color, width=1):
        d.rectangle(
            [box[0] * f, box[1] * f + 16, box[2] * f, box[3] * f + 16], outline=color, width=width
        )

    for r in img.regions:
        rect(r.box, (0, 200, 0))
    for fb in img.findings:
        rect(fb.box, (0, 255, 0), 3)
    for r in pred.regions:
        rect(r.box, (230, 40, 40))
    for les in pred.lesions:
        rect(les.box, (255, 150, 0), 2)
        d.text(
            (les.box[0] * f, les.box[3] * f + 17),
            f"{les.finding_code} {les.score:.2f}",
            fill=(255, 150, 0),
        )
    d.text((2, 2), title, fill=(255, 255, 255))
    return canvas


def draw_grid(
    examples: list[tuple[PhantomStudy, PhantomImage, ImagePrediction]],
    model: ReferenceModel,
    path: Path,
    per_domain: int = 4,
) -> None:
    tiles = []
    for domain in DOMAINS:
        mine = [e for e in examples if e[0].domain == domain]
        abnormal = [e for e in mine if e[1].findings][: per_domain - 1]
        normal = [e for e in mine if not e[1].findings][: per_domain - len(abnormal)]
        for study, img, pred in (abnormal + normal)[:per_domain]:
            gt = ",".join(f.code for f in img.findings) or "normal"
            tiles.append(
                _tile(
                    img,
                    pred,
                    f"{domain} seed {study.seed} #{img.slice_index}: {gt} | pred {pred.domain}",
                )
            )
    cols = per_domain
    rows = (len(tiles) + cols - 1) // cols
    grid = Image.new("RGB", (cols * TILE, rows * (TILE + 16)), (20, 20, 20))
    for k, t in enumerate(tiles):
        grid.paste(t, ((k % cols) * TILE, (k // cols) * (TILE + 16)))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def draw_shift_grid(
    examples: dict[str, list[tuple[PhantomStudy, PhantomImage, ImagePrediction]]],
    path: Path,
    tile: int = 240,
) -> None:
    """One row per variation (clean first), one column per domain: the same abnormal test image
    in every row, shown through its own (shifted) header window, with true boxes green,
    predicted regions red, predicted lesions orange."""
    rows = []
    for variant, items in examples.items():
        row = []
        for domain in DOMAINS:
            mine = [e for e in items if e[0].domain == domain]
            pick = next((e for e in mine if e[1].findings), mine[0] if mine else None)
            if pick is None:
                blank = Image.new("RGB", (TILE, TILE + 16), (20, 20, 20))
                ImageDraw.Draw(blank).text((4, 4), f"{variant}: n/a for {domain}", fill="white")
                row.append(blank)
                continue
            study, img, pred = pick
            gt = ",".join(f.code for f in img.findings) or "normal"
            row.append(
                _tile(img, pred, f"{variant} | {domain} {study.seed}: {gt} -> {pred.domain}")
            )
        rows.append(row)
    f = tile / TILE
    th = int((TILE + 16) * f)
    grid = Image.new("RGB", (len(DOMAINS) * tile, len(rows) * th), (20, 20, 20))
    for r, row in enumerate(rows):
        for c, t in enumerate(row):
            grid.paste(t.resize((tile, th)), (c * tile, r * th))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
