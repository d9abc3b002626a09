"""``late``: one classifier per feature set, combined by learned weights over those present."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from emostore.heads.base import Head, HeadParams, masked, register
from emostore.heads.models.mlp import mlp


@dataclass
class LateParams(HeadParams):
    layers: int = 1


@register
class LateHead(Head):
    """Each modality predicts alone; the outputs are averaged with softmax weights renormalised
    over the modalities present in the row. A row with none present gets a learned prior."""

    name = "late"
    Params = LateParams

    def __init__(self, dims: list[int], n_out: int, params: LateParams):
        super().__init__(dims, n_out, params)
        self.branches = nn.ModuleList(
            nn.Sequential(mlp(d, params.hidden, params.layers, params.dropout),
                          nn.Linear(params.hidden if params.layers else d, n_out)) for d in dims)
        self.weight_logits = nn.Parameter(torch.zeros(len(dims)))
        self.prior = nn.Parameter(torch.zeros(n_out))

    def forward(self, xs: list[Tensor], mask: Tensor) -> Tensor:
        outs = torch.stack([b(masked(x, mask[..., m])) for m, (b, x) in enumerate(zip(self.branches, xs))], -2)
        logits = self.weight_logits.expand_as(mask.float()).masked_fill(~mask, -1e4)
        weights = torch.softmax(logits, dim=-1) * mask  # exactly zero for absent modalities
        combined = (weights.unsqueeze(-1) * outs).sum(-2)
        return torch.where(mask.any(-1, keepdim=True), combined, self.prior.expand_as(combined))
