"""``attention``: a small transformer encoder over one token per modality plus a summary token.

Absent modalities are removed with the key padding mask (and zeroed before projection); the
summary token is always present, so a row with no modality at all still has something to read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from emostore.heads.base import Dropout, Head, HeadParams, masked, register


@dataclass
class AttentionParams(HeadParams):
    hidden: int = 128
    layers: int = 1
    attention_heads: int = 4
    dropout: float = 0.2


@register
class AttentionHead(Head):
    name = "attention"
    Params = AttentionParams

    def __init__(self, dims: list[int], n_out: int, params: AttentionParams):
        super().__init__(dims, n_out, params)
        h = params.hidden
        if h % params.attention_heads:
            raise ValueError(f"hidden ({h}) must be a multiple of attention_heads ({params.attention_heads})")
        self.drop = Dropout(params.dropout)
        self.proj = nn.ModuleList(nn.Linear(d, h) for d in dims)
        self.modality = nn.Parameter(torch.randn(len(dims), h) * 0.02)
        self.summary = nn.Parameter(torch.randn(h) * 0.02)
        layer = nn.TransformerEncoderLayer(h, params.attention_heads, dim_feedforward=2 * h,
                                           dropout=params.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, params.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(h)
        self.out = nn.Linear(h, n_out)

    def forward(self, xs: list[Tensor], mask: Tensor) -> Tensor:
        lead = mask.shape[:-1]
        tokens = [p(self.drop(masked(x, mask[..., m]))) + self.modality[m]
                  for m, (p, x) in enumerate(zip(self.proj, xs))]
        seq = torch.stack([self.summary.expand(*lead, -1)] + tokens, -2).flatten(0, -3)  # [B, 1+M, H]
        present = torch.cat([torch.ones(*lead, 1, dtype=torch.bool, device=mask.device), mask], -1)
        enc = self.encoder(seq, src_key_padding_mask=~present.flatten(0, -2))
        return self.out(self.norm(enc[:, 0])).unflatten(0, lead)
