"""``gated``: a gated multimodal unit (Arevalo et al., 2017) generalised to M modalities.

Each present modality is projected, ``h_m = tanh(W_m x_m)``; gates computed from all inputs
(and the mask) weigh them per dimension, ``h = sum_m z_m * h_m`` with ``z`` a softmax over the
present modalities; a small classifier reads ``h``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from emostore.heads.base import Dropout, Head, HeadParams, fuse, fused_dim, masked, register


@dataclass
class GatedParams(HeadParams):
    pass


@register
class GatedHead(Head):
    name = "gated"
    Params = GatedParams

    def __init__(self, dims: list[int], n_out: int, params: GatedParams):
        super().__init__(dims, n_out, params)
        h = params.hidden
        self.drop = Dropout(params.dropout)
        self.proj = nn.ModuleList(nn.Linear(d, h) for d in dims)
        self.gate = nn.Linear(fused_dim(dims), h * len(dims))
        self.out = nn.Sequential(Dropout(params.dropout), nn.Linear(h, h), nn.GELU(),
                                 Dropout(params.dropout), nn.Linear(h, n_out))

    def forward(self, xs: list[Tensor], mask: Tensor) -> Tensor:
        hs = torch.stack([torch.tanh(p(self.drop(masked(x, mask[..., m]))))
                          for m, (p, x) in enumerate(zip(self.proj, xs))], -2)      # [..., M, H]
        z = self.gate(self.drop(fuse(xs, mask))).unflatten(-1, (len(self.dims), -1))  # [..., M, H]
        z = torch.softmax(z.masked_fill(~mask.unsqueeze(-1), -1e4), dim=-2) * mask.unsqueeze(-1)
        return self.out((z * hs).sum(-2))
