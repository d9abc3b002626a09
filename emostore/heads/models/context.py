"""``context``: dialogue context over each dialogue's sequence of utterances.

Each utterance is first fused like ``mlp`` (masked feature sets plus mask flags) and tagged with
whether its speaker is the same as the previous turn's. A sequence encoder then reads the whole
dialogue: a bidirectional GRU by default, or an LSTM, or a small transformer. Last, every
utterance attends over the dialogue with learned same-speaker / other-speaker embeddings on the
keys and values (who said what, relative to the utterance being classified), and a classifier
reads the utterance, its encoder state and that speaker-aware summary.

``causal=True`` uses only past and current turns everywhere (a unidirectional encoder, a causal
transformer mask, causal attention), so the prediction for a turn never changes once made: the
mode for real-time use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from emostore.heads.base import Dropout, Head, HeadParams, fuse, fused_dim, register

ENCODERS = ("gru", "lstm", "transformer")
#: Speaker relation of a context turn to the target turn.
SELF, SAME, OTHER, UNKNOWN = 0, 1, 2, 3


@dataclass
class ContextParams(HeadParams):
    hidden: int = 128
    encoder: str = "gru"
    layers: int = 1
    attention_heads: int = 4
    causal: bool = False
    #: Attend over the dialogue with same-/other-speaker embeddings before classifying.
    speaker_attention: bool = True
    dropout: float = 0.3


def speaker_relations(speakers: Tensor) -> Tensor:
    """``[B, T, T]`` relation of turn j (last axis) to target turn t: self, same, other, unknown."""
    si, sj = speakers.unsqueeze(-1), speakers.unsqueeze(-2)
    rel = torch.where(si == sj, SAME, OTHER)
    rel = torch.where((si < 0) | (sj < 0), UNKNOWN, rel)
    eye = torch.eye(speakers.shape[-1], dtype=torch.bool, device=speakers.device)
    return torch.where(eye, SELF, rel)


def turn_changes(speakers: Tensor) -> Tensor:
    """``[B, T]``: 0 for the first turn, 1 when the previous turn had the same speaker, 2 otherwise."""
    prev = torch.cat([speakers[:, :1], speakers[:, :-1]], 1)
    change = torch.where((prev == speakers) & (speakers >= 0), 1, 2)
    change[:, 0] = 0
    return change


def sinusoid(length: int, dim: int, device: torch.device) -> Tensor:
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table


@register
class ContextHead(Head):
    name = "context"
    Params = ContextParams
    sequence = True

    def __init__(self, dims: list[int], n_out: int, params: ContextParams):
        super().__init__(dims, n_out, params)
        if params.encoder not in ENCODERS:
            raise ValueError(f"context encoder must be one of {ENCODERS}, got {params.encoder!r}")
        h = params.hidden
        self.drop = Dropout(params.dropout)
        self.utterance = nn.Sequential(Dropout(params.dropout), nn.Linear(fused_dim(dims), h), nn.GELU())
        self.turn = nn.Embedding(3, h)
        if params.encoder == "transformer":
            if h % params.attention_heads:
                raise ValueError(f"hidden ({h}) must be a multiple of attention_heads ({params.attention_heads})")
            layer = nn.TransformerEncoderLayer(h, params.attention_heads, dim_feedforward=2 * h,
                                               dropout=params.dropout, batch_first=True, norm_first=True)
            self.encoder: nn.Module = nn.TransformerEncoder(layer, params.layers, enable_nested_tensor=False)
        else:
            rnn = nn.GRU if params.encoder == "gru" else nn.LSTM
            bidirectional = not params.causal
            self.encoder = rnn(h, h // 2 if bidirectional else h, num_layers=params.layers, batch_first=True,
                               bidirectional=bidirectional, dropout=params.dropout if params.layers > 1 else 0.0)
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
        self.rel_key = nn.Embedding(4, h)
        self.rel_value = nn.Embedding(4, h)
        self.out = nn.Sequential(Dropout(params.dropout), nn.Linear(3 * h, h), nn.GELU(),
                                 Dropout(params.dropout), nn.Linear(h, n_out))

    def _encode(self, u: Tensor, valid: Tensor) -> Tensor:
        p: ContextParams = self.params  # type: ignore[assignment]
        T = u.shape[1]
        if p.encoder == "transformer":
            attn_mask = (torch.triu(torch.ones(T, T, dtype=torch.bool, device=u.device), 1)
                         if p.causal else None)
            x = u + sinusoid(T, u.shape[-1], u.device)
            return self.encoder(x, mask=attn_mask, src_key_padding_mask=~valid)
        lengths = valid.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(u, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.encoder(packed)
        return pad_packed_sequence(out, batch_first=True, total_length=T)[0]

    def forward(self, xs: list[Tensor], mask: Tensor, valid: Tensor, speakers: Tensor) -> Tensor:
        p: ContextParams = self.params  # type: ignore[assignment]
        u = self.utterance(fuse(xs, mask)) + self.turn(turn_changes(speakers))
        u = u * valid.unsqueeze(-1)
        h = self.drop(self._encode(u, valid)) * valid.unsqueeze(-1)
        if not p.speaker_attention:
            return self.out(torch.cat([u, h, torch.zeros_like(h)], -1))
        rel = speaker_relations(speakers)                                   # [B, T, T]
        q, k, v = self.query(h), self.key(h), self.value(h)
        scores = q @ k.transpose(1, 2) + torch.gather(q @ self.rel_key.weight.T, 2, rel)
        scores = scores / math.sqrt(h.shape[-1])
        allowed = valid.unsqueeze(1).expand_as(scores)
        if p.causal:
            allowed = allowed & torch.ones_like(scores, dtype=torch.bool).tril()
        attn = torch.softmax(scores.masked_fill(~allowed, -1e4), dim=-1) * allowed
        by_relation = torch.zeros(*attn.shape[:2], 4, device=attn.device, dtype=attn.dtype)
        by_relation.scatter_add_(2, rel, attn)
        context = attn @ v + by_relation @ self.rel_value.weight
        return self.out(torch.cat([u, h, context], -1))
