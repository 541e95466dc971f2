"""Targets and losses for the region-aware network (CenterNet-style heatmaps + box regression)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def centre_cells(boxes: Tensor, g: int) -> tuple[Tensor, Tensor]:
    """Integer grid cell (ix, iy) of each box centre. boxes (..., 4) normalised."""
    cx = ((boxes[..., 0] + boxes[..., 2]) / 2 * g).clamp(0, g - 1e-3)
    cy = ((boxes[..., 1] + boxes[..., 3]) / 2 * g).clamp(0, g - 1e-3)
    return cx.floor().long(), cy.floor().long()


def gaussian_maps(boxes: Tensor, valid: Tensor, g: int, size_div: float) -> Tensor:
    """(B, N, 4) boxes → (B, N, g, g) Gaussians peaking at exactly 1 on the centre cell."""
    ix, iy = centre_cells(boxes, g)
    w = (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * g
    h = (boxes[..., 3] - boxes[..., 1]).clamp(min=0) * g
    sigma = (torch.minimum(w, h) / size_div).clamp(min=0.6, max=4.0)
    ar = torch.arange(g, device=boxes.device, dtype=boxes.dtype)
    dx = ar.view(1, 1, 1, g) - ix.unsqueeze(-1).unsqueeze(-1).to(boxes.dtype)
    dy = ar.view(1, 1, g, 1) - iy.unsqueeze(-1).unsqueeze(-1).to(boxes.dtype)
    maps = torch.exp(-(dx**2 + dy**2) / (2 * sigma.unsqueeze(-1).unsqueeze(-1) ** 2))
    return maps * valid.unsqueeze(-1).unsqueeze(-1).to(boxes.dtype)


def focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of peaks."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target >= 0.999
    pos_loss = -torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = -torch.log(1 - p) * p**2 * (1 - target) ** 4 * (~pos)
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


def gather_cells(maps: Tensor, ix: Tensor, iy: Tensor, channels: int) -> Tensor:
    """maps (B, N*channels, g, g) laid out [n][c]; ix, iy (B, N) → (B, N, channels)."""
    b, _, g, _ = maps.shape
    n = ix.shape[1]
    flat = maps.reshape(b, n, channels, g * g)
    idx = (iy.clamp(0, g - 1) * g + ix.clamp(0, g - 1)).view(b, n, 1, 1).expand(b, n, channels, 1)
    return torch.gather(flat, 3, idx).squeeze(3)


def giou_loss(pred: Tensor, target: Tensor) -> Tensor:
    ix1 = torch.maximum(pred[..., 0], target[..., 0])
    iy1 = torch.maximum(pred[..., 1], target[..., 1])
    ix2 = torch.minimum(pred[..., 2], target[..., 2])
    iy2 = torch.minimum(pred[..., 3], target[..., 3])
    inter = (ix2 - ix1).clamp(min=0) * (iy2 - iy1).clamp(min=0)
    ap = (pred[..., 2] - pred[..., 0]).clamp(min=0) * (pred[..., 3] - pred[..., 1]).clamp(min=0)
    at = (target[..., 2] - target[..., 0]) * (target[..., 3] - target[..., 1])
    union = ap + at - inter + 1e-7
    cx1 = torch.minimum(pred[..., 0], target[..., 0])
    cy1 = torch.minimum(pred[..., 1], target[..., 1])
    cx2 = torch.maximum(pred[..., 2], target[..., 2])
    cy2 = torch.maximum(pred[..., 3], target[..., 3])
    hull = (cx2 - cx1) * (cy2 - cy1) + 1e-7
    return 1 - inter / union + (hull - union) / hull


def region_losses(out: dict[str, Tensor], boxes: Tensor, present: Tensor) -> dict[str, Tensor]:
    """Heatmap focal loss + ltrb L1/GIoU at the centre cell and its 8 neighbours."""
    b, r, g, _ = out["region_hm"].shape
    maps = gaussian_maps(boxes, present, g, size_div=6.0)  # B,R,g,g (class = region index)
    hm_loss = focal_loss(out["region_hm"], maps)
    ix, iy = centre_cells(boxes, g)
    l1_total = boxes.new_zeros(())
    giou_total = boxes.new_zeros(())
    pm = present.to(boxes.dtype)
    n = pm.sum().clamp(min=1)
    for dx, dy, w in ((0, 0, 1.0), (-1, 0, 0.3), (1, 0, 0.3), (0, -1, 0.3), (0, 1, 0.3)):
        jx, jy = (ix + dx).clamp(0, g - 1), (iy + dy).clamp(0, g - 1)
        ltrb = gather_cells(out["region_ltrb"], jx, jy, 4)  # B,R,4
        cx = (jx.to(boxes.dtype) + 0.5) / g
        cy = (jy.to(boxes.dtype) + 0.5) / g
        target = torch.stack(
            [cx - boxes[..., 0], cy - boxes[..., 1], boxes[..., 2] - cx, boxes[..., 3] - cy], -1
        )
        pred_box = torch.stack(
            [cx - ltrb[..., 0], cy - ltrb[..., 1], cx + ltrb[..., 2], cy + ltrb[..., 3]], -1
        )
        l1_total = l1_total + w * ((ltrb - target).abs().sum(-1) * pm).sum() / n
        giou_total = giou_total + w * (giou_loss(pred_box, boxes) * pm).sum() / n
    return {"region_hm": hm_loss, "region_l1": l1_total, "region_giou": giou_total}


def lesion_losses(
    out: dict[str, Tensor], boxes: Tensor, classes: Tensor, n_findings: int
) -> dict[str, Tensor]:
    b, f, g, _ = out["lesion_hm"].shape
    valid = classes >= 0
    maps = gaussian_maps(boxes, valid, g, size_div=4.0)  # B,L,g,g
    onehot = F.one_hot(classes.clamp(min=0), n_findings).to(maps.dtype) * valid.unsqueeze(-1)
    target = (maps.unsqueeze(2) * onehot.unsqueeze(-1).unsqueeze(-1)).amax(dim=1)  # B,F,g,g
    hm_loss = focal_loss(out["lesion_hm"], target)
    ix, iy = centre_cells(boxes, g)
    vm = valid.to(boxes.dtype)
    n = vm.sum().clamp(min=1)
    idx = (iy * g + ix).unsqueeze(1).expand(b, 2, -1)  # B,2,L
    wh = torch.gather(out["lesion_wh"].flatten(2), 2, idx).transpose(1, 2)  # B,L,2
    off = torch.gather(out["lesion_off"].flatten(2), 2, idx).transpose(1, 2)
    wh_t = torch.stack([boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]], -1)
    cxy = torch.stack(
        [(boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2], -1
    )
    off_t = cxy * g - torch.stack([ix, iy], -1).to(boxes.dtype)
    wh_loss = ((wh - wh_t).abs().sum(-1) * vm).sum() / n
    off_loss = ((off - off_t).abs().sum(-1) * vm).sum() / n
    return {"lesion_hm": hm_loss, "lesion_wh": wh_loss * 10, "lesion_off": off_loss}
