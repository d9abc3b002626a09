"""``linear``: one linear layer over the early fusion of the feature sets (masks as flags)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from emostore.heads.base import Dropout, Head, HeadParams, fuse, fused_dim, register


@dataclass
class LinearParams(HeadParams):
    dropout: float = 0.1


@register
class LinearHead(Head):
    name = "linear"
    Params = LinearParams

    def __init__(self, dims: list[int], n_out: int, params: LinearParams):
        super().__init__(dims, n_out, params)
        self.drop = Dropout(params.dropout)
        self.out = nn.Linear(fused_dim(dims), n_out)

    def forward(self, xs: list[Tensor], mask: Tensor) -> Tensor:
        return self.out(self.drop(fuse(xs, mask)))
