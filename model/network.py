"""The reference region-aware network: a compact CNN that looks at the whole image (domain,
region presence, per-region abnormality, image-level findings) and then at regions (per-region
centre heatmaps with box regression for Text→Region, ROI-pooled query boxes for Region→Text,
CenterNet-style lesion detection decoded in-graph to top-K).

All boxes are normalised model-frame (x1, y1, x2, y2) in [0, 1] of the square letterboxed input
(see shared/inference/preprocess.py for the map back to source pixels). Calibration
temperatures are buffers that divide the logits, so they travel inside the exported graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

N_DOMAIN_OUTPUTS = 5  # 4 phantom domains + 'unsupported'
TEMPERATURE_HEADS = ("domain", "presence", "abnormal", "finding", "lesion", "r2t")


@dataclass(frozen=True)
class NetConfig:
    input_size: int = 256
    n_regions: int = 27
    n_findings: int = 11
    widths: tuple[int, int, int, int, int] = (16, 32, 64, 128, 160)
    neck: int = 64
    top_k: int = 16

    @property
    def stride(self) -> int:
        return 8

    @property
    def grid(self) -> int:
        return self.input_size // self.stride


def conv_bn(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)
    )


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = conv_bn(c, c)
        self.b = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.b(self.a(x)))


class RegionNet(nn.Module):
    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        self.stem = conv_bn(1, w[0], 2)  # /2
        self.s1 = conv_bn(w[0], w[1], 2)  # /4
        self.s2 = nn.Sequential(conv_bn(w[1], w[2], 2), ResBlock(w[2]))  # /8
        self.s3 = nn.Sequential(conv_bn(w[2], w[3], 2), ResBlock(w[3]))  # /16
        self.s4 = nn.Sequential(conv_bn(w[3], w[4], 2), ResBlock(w[4]))  # /32
        n = cfg.neck
        self.lat4 = nn.Conv2d(w[4], n, 1)
        self.lat3 = nn.Conv2d(w[3], n, 1)
        self.lat2 = nn.Conv2d(w[2], n, 1)
        self.smooth3 = conv_bn(n, n)
        self.smooth2 = conv_bn(n, n)
        self.head = conv_bn(n, n)
        R, Fn = cfg.n_regions, cfg.n_findings
        self.region_hm = nn.Conv2d(n, R, 1)
        self.region_ltrb = nn.Conv2d(n, 4 * R, 1)
        self.lesion_hm = nn.Conv2d(n, Fn, 1)
        self.lesion_wh = nn.Conv2d(n, 2, 1)
        self.lesion_off = nn.Conv2d(n, 2, 1)
        g = w[4] * 6 + n * 2
        self.global_mlp = nn.Sequential(nn.Linear(g, 256), nn.ReLU(True), nn.Dropout(0.1))
        self.domain_fc = nn.Linear(256, N_DOMAIN_OUTPUTS)
        self.presence_fc = nn.Linear(256, R)
        self.abnormal_fc = nn.Linear(256, R)
        self.finding_fc = nn.Linear(256, Fn)
        q_in = n + R + R + 7 + N_DOMAIN_OUTPUTS
        self.r2t_mlp = nn.Sequential(
            nn.Linear(q_in, 128),
            nn.ReLU(True),
            nn.Linear(128, 128),
            nn.ReLU(True),
            nn.Linear(128, R),
        )
        for name in TEMPERATURE_HEADS:
            self.register_buffer(f"t_{name}", torch.ones(()))
        self.register_buffer("b_lesion", torch.zeros(()))
        # added to the calibrated domain logits: the OOD gate's offset for 'unsupported'
        self.register_buffer("b_domain", torch.zeros(N_DOMAIN_OUTPUTS))
        # CenterNet's prior: heatmaps start near 0.01 so the focal loss is stable at step 0
        nn.init.constant_(self.region_hm.bias, -4.6)
        nn.init.constant_(self.lesion_hm.bias, -4.6)
        g_ = cfg.grid
        centres = (torch.arange(g_, dtype=torch.float32) + 0.5) / g_
        self.register_buffer("cy", centres.view(1, 1, g_, 1).expand(1, 1, g_, g_).reshape(1, 1, -1))
        self.register_buffer("cx", centres.view(1, 1, 1, g_).expand(1, 1, g_, g_).reshape(1, 1, -1))

    # ---- raw training outputs -------------------------------------------------------------
    def features(self, image: Tensor) -> dict[str, Tensor]:
        x = self.stem(image)
        x = self.s1(x)
        c2 = self.s2(x)
        c3 = self.s3(c2)
        c4 = self.s4(c3)
        p4 = self.lat4(c4)
        p3 = self.smooth3(self.lat3(c3) + F.interpolate(p4, scale_factor=2.0, mode="nearest"))
        p2 = self.smooth2(self.lat2(c2) + F.interpolate(p3, scale_factor=2.0, mode="nearest"))
        h = self.head(p2)
        b = image.shape[0]
        quad = F.avg_pool2d(c4, kernel_size=c4.shape[-1] // 2).reshape(b, -1)  # 2x2: laterality
        pooled = torch.cat(
            [
                c4.mean(dim=(2, 3)),
                c4.amax(dim=(2, 3)),
                quad,
                h.mean(dim=(2, 3)),
                h.amax(dim=(2, 3)),
            ],
            dim=1,
        )
        gfeat = self.global_mlp(pooled)
        return {
            "head": h,
            "domain": self.domain_fc(gfeat),
            "presence": self.presence_fc(gfeat),
            "abnormal": self.abnormal_fc(gfeat),
            "finding": self.finding_fc(gfeat),
            "region_hm": self.region_hm(h),
            "region_ltrb": self.region_ltrb(h),
            "lesion_hm": self.lesion_hm(h),
            "lesion_wh": self.lesion_wh(h),
            "lesion_off": self.lesion_off(h),
        }

    def decode_regions(self, out: dict[str, Tensor]) -> Tensor:
        """Per region class: the box regressed at its heatmap peak. (B, R, 4)"""
        hm = out["region_hm"].flatten(2)  # B,R,G*G
        b, r, _ = hm.shape
        idx = hm.argmax(dim=2, keepdim=True)  # B,R,1
        ltrb = out["region_ltrb"].flatten(2).reshape(b, r, 4, -1)
        ltrb = torch.gather(ltrb, 3, idx.unsqueeze(2).expand(b, r, 4, 1)).squeeze(3)  # B,R,4
        cx = torch.gather(self.cx.expand(b, r, -1), 2, idx).squeeze(2)
        cy = torch.gather(self.cy.expand(b, r, -1), 2, idx).squeeze(2)
        return torch.stack(
            [cx - ltrb[..., 0], cy - ltrb[..., 1], cx + ltrb[..., 2], cy + ltrb[..., 3]], dim=-1
        )

    def query_logits(
        self, out: dict[str, Tensor], region_boxes: Tensor, presence_p: Tensor, query: Tensor
    ) -> Tensor:
        """Region→Text: (B, Q, 4) normalised query boxes → (B, Q, R) logits."""
        h = out["head"]
        b, c, g, _ = h.shape
        feats = torch.cat([h, out["region_hm"]], dim=1).flatten(2)  # B,C',G*G
        x1, y1, x2, y2 = query.unbind(-1)  # B,Q
        k = 4.0 * g  # soft edges, about a quarter cell wide
        cx, cy = self.cx[0], self.cy[0]  # 1,G*G
        wx = torch.sigmoid((cx - x1.unsqueeze(-1)) * k) * torch.sigmoid((x2.unsqueeze(-1) - cx) * k)
        wy = torch.sigmoid((cy - y1.unsqueeze(-1)) * k) * torch.sigmoid((y2.unsqueeze(-1) - cy) * k)
        m = wx * wy  # B,Q,G*G
        pooled = torch.bmm(m, feats.transpose(1, 2)) / (m.sum(-1, keepdim=True) + 1e-4)
        # overlap with each region's own predicted box: the strongest cue when T2R is good
        iou = box_iou_pairwise(query, region_boxes) * presence_p.unsqueeze(1)  # B,Q,R
        w = (x2 - x1).clamp(min=1e-4)
        hh = (y2 - y1).clamp(min=1e-4)
        geom = torch.stack([x1, y1, x2, y2, w, hh, torch.log(w * hh)], dim=-1)
        dom = torch.softmax(out["domain"], dim=-1).unsqueeze(1).expand(-1, query.shape[1], -1)
        return self.r2t_mlp(torch.cat([pooled, iou.detach(), geom, dom], dim=-1))

    # ---- the exported inference graph ----------------------------------------------------------
    def forward(self, image: Tensor, query_boxes: Tensor) -> tuple[Tensor, ...]:
        out = self.features(image)
        domain_probs = torch.softmax(out["domain"] / self.t_domain + self.b_domain, dim=-1)
        presence = torch.sigmoid(out["presence"] / self.t_presence)
        region_boxes = self.decode_regions(out).clamp(0.0, 1.0)
        abnormal = torch.sigmoid(out["abnormal"] / self.t_abnormal)
        finding = torch.sigmoid(out["finding"] / self.t_finding)
        q = self.query_logits(out, region_boxes, presence, query_boxes)
        query_probs = torch.softmax(q / self.t_r2t, dim=-1)
        boxes, scores, classes = self.decode_lesions(out)
        return (
            domain_probs,
            presence,
            region_boxes,
            abnormal,
            finding,
            boxes,
            scores,
            classes,
            query_probs,
        )

    def decode_lesions(self, out: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        # Platt scaling (temperature and bias), fitted on the detections the model reports.
        hm = torch.sigmoid(out["lesion_hm"] / self.t_lesion + self.b_lesion)
        b, f, g, _ = hm.shape
        peaks = hm * (F.max_pool2d(hm, 3, 1, 1) == hm).to(hm.dtype)  # 3x3 NMS
        scores, idx = torch.topk(peaks.reshape(b, -1), self.cfg.top_k, dim=1)
        classes = torch.div(idx, g * g, rounding_mode="floor")
        cell = idx - classes * g * g
        wh = out["lesion_wh"].flatten(2)
        off = out["lesion_off"].flatten(2)
        gx = (cell % g).to(hm.dtype)
        gy = torch.div(cell, g, rounding_mode="floor").to(hm.dtype)
        ox = torch.gather(off[:, 0], 1, cell)
        oy = torch.gather(off[:, 1], 1, cell)
        w = torch.gather(wh[:, 0], 1, cell).clamp(min=0)
        h = torch.gather(wh[:, 1], 1, cell).clamp(min=0)
        cx = (gx + ox) / g
        cy = (gy + oy) / g
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
        return boxes.clamp(0.0, 1.0), scores, classes


OUTPUT_NAMES = (
    "domain_probs",
    "region_presence",
    "region_boxes",
    "region_abnormal",
    "finding_probs",
    "lesion_boxes",
    "lesion_scores",
    "lesion_classes",
    "query_region_probs",
)


def box_iou_pairwise(a: Tensor, b: Tensor) -> Tensor:
    """(B, Q, 4) × (B, R, 4) → (B, Q, R) IoU."""
    a_ = a.unsqueeze(2)
    b_ = b.unsqueeze(1)
    iw = (torch.minimum(a_[..., 2], b_[..., 2]) - torch.maximum(a_[..., 0], b_[..., 0])).clamp(
        min=0
    )
    ih = (torch.minimum(a_[..., 3], b_[..., 3]) - torch.maximum(a_[..., 1], b_[..., 1])).clamp(
        min=0
    )
    inter = iw * ih
    area_a = (a_[..., 2] - a_[..., 0]).clamp(min=0) * (a_[..., 3] - a_[..., 1]).clamp(min=0)
    area_b = (b_[..., 2] - b_[..., 0]).clamp(min=0) * (b_[..., 3] - b_[..., 1]).clamp(min=0)
    return inter / (area_a + area_b - inter + 1e-6)
