"""``mlp``: early fusion (masked feature sets concatenated with their mask flags) and an MLP."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from emostore.heads.base import Dropout, Head, HeadParams, fuse, fused_dim, register


@dataclass
class MLPParams(HeadParams):
    layers: int = 1


def mlp(d_in: int, hidden: int, layers: int, dropout: float) -> nn.Sequential:
    """``layers`` blocks of Linear -> GELU -> Dropout (input dropout first)."""
    blocks: list[nn.Module] = [Dropout(dropout)]
    for i in range(layers):
        blocks += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.GELU(), Dropout(dropout)]
    return nn.Sequential(*blocks)


@register
class MLPHead(Head):
    name = "mlp"
    Params = MLPParams

    def __init__(self, dims: list[int], n_out: int, params: MLPParams):
        super().__init__(dims, n_out, params)
        self.body = mlp(fused_dim(dims), params.hidden, params.layers, params.dropout)
        self.out = nn.Linear(params.hidden if params.layers else fused_dim(dims), n_out)

    def forward(self, xs: list[Tensor], mask: Tensor) -> Tensor:
        return self.out(self.body(fuse(xs, mask)))
