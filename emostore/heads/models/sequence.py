"""``sequence``: how a voice or a face moves, from the frame sequences stored with a feature set.

Each feature set that keeps frames (``audio/egemaps-lld``, SSL frames, ``visual/landmarks``,
``visual/fer``) gets its own temporal encoder: 1-D convolutions (which also subsample time by
``stride`` per layer) then a bidirectional GRU, or a small transformer (``encoder=transformer``),
both with padding masks; attention pooling over the valid frames gives one vector per utterance.
Those vectors are fused with the utterance-level feature sets (text vectors, functionals) by one
of the utterance heads (``fusion=mlp|linear|late|gated|attention``), which also applies the
modality masks: a row without frames is a masked modality, and ``--modality-dropout`` hides them
like any other. ``max_frames`` crops long utterances (at random while training, in the middle
otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from emostore.errors import UserError
from emostore.heads.base import Dropout, Head, HeadParams, build_head, head_class, register
from emostore.heads.models.context import sinusoid

ENCODERS = ("gru", "transformer")
FUSIONS = ("mlp", "linear", "late", "gated", "attention")


@dataclass
class SequenceParams(HeadParams):
    hidden: int = 128
    #: Temporal encoder after the convolutions: a bidirectional ``gru`` or a ``transformer``.
    encoder: str = "gru"
    conv_layers: int = 2
    kernel: int = 5
    #: Time subsampling of each convolution.
    stride: int = 3
    #: GRU or transformer layers.
    layers: int = 1
    attention_heads: int = 4
    #: Longest frame sequence seen (0: all); longer ones are cropped.
    max_frames: int = 1000
    #: The utterance head that fuses the pooled sequences with the utterance-level feature sets.
    fusion: str = "mlp"
    dropout: float = 0.3


def _conv_lengths(lengths: Tensor, conv: nn.Conv1d) -> Tensor:
    """Valid output frames of ``conv`` for inputs of ``lengths`` frames."""
    k, s, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]  # type: ignore[index]
    return (torch.div(lengths + 2 * pad - k, s, rounding_mode="floor") + 1).clamp(min=1)


class TemporalEncoder(nn.Module):
    """``[B, T, D]`` frames with ``[B]`` lengths -> ``[B, H]``: convolutions, GRU/transformer,
    attention pooling; padding never reaches a valid position or the pooled vector."""

    def __init__(self, d_in: int, p: SequenceParams):
        super().__init__()
        h = p.hidden
        self.p = p
        self.drop = Dropout(p.dropout)
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i in range(p.conv_layers):
            self.convs.append(nn.Conv1d(d_in if i == 0 else h, h, p.kernel, stride=p.stride, padding=p.kernel // 2))
            self.norms.append(nn.LayerNorm(h))
        width = h if p.conv_layers else d_in
        if p.encoder == "transformer":
            self.proj = nn.Linear(width, h) if width != h else nn.Identity()
            layer = nn.TransformerEncoderLayer(h, p.attention_heads, dim_feedforward=2 * h, dropout=p.dropout,
                                               batch_first=True, norm_first=True)
            self.encoder: nn.Module = nn.TransformerEncoder(layer, p.layers, enable_nested_tensor=False)
        else:
            self.encoder = nn.GRU(width, h // 2, num_layers=p.layers, batch_first=True, bidirectional=True,
                                  dropout=p.dropout if p.layers > 1 else 0.0)
        self.score = nn.Sequential(nn.Linear(h, h // 2), nn.Tanh(), nn.Linear(h // 2, 1))
        self.norm = nn.LayerNorm(h)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        lengths = lengths.clamp(min=1)  # a row without frames reads one zero frame (and is masked later)
        valid = torch.arange(x.shape[1], device=x.device) < lengths.unsqueeze(1)
        x = self.drop(x * valid.unsqueeze(-1))
        for conv, norm in zip(self.convs, self.norms):
            x = conv(x.transpose(1, 2)).transpose(1, 2)
            lengths = _conv_lengths(lengths, conv)
            valid = torch.arange(x.shape[1], device=x.device) < lengths.unsqueeze(1)
            x = self.drop(nn.functional.gelu(norm(x))) * valid.unsqueeze(-1)
        if self.p.encoder == "transformer":
            x = self.proj(x)
            x = self.encoder(x + sinusoid(x.shape[1], x.shape[-1], x.device), src_key_padding_mask=~valid)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            x = pad_packed_sequence(self.encoder(packed)[0], batch_first=True, total_length=x.shape[1])[0]
        scores = self.score(x).squeeze(-1).masked_fill(~valid, -1e4)
        weights = torch.softmax(scores, dim=1) * valid
        return self.norm((weights.unsqueeze(-1) * x).sum(1))



@register
class SequenceHead(Head):
    name = "sequence"
    Params = SequenceParams
    frames = True

    def __init__(self, dims: list[int], n_out: int, params: SequenceParams, *,
                 frame_dims: list[int | None] | None = None):
        super().__init__(dims, n_out, params)
        p = params
        frame_dims = list(frame_dims or [None] * len(dims))
        if not any(d is not None for d in frame_dims):
            raise UserError("the sequence head needs at least one feature set with frame sequences "
                            "(e.g. audio/egemaps-lld, visual/landmarks)")
        if p.encoder not in ENCODERS:
            raise UserError(f"sequence encoder must be one of {', '.join(ENCODERS)}, got {p.encoder!r}")
        if p.fusion not in FUSIONS:
            raise UserError(f"sequence fusion must be one of {', '.join(FUSIONS)}, got {p.fusion!r}")
        if p.hidden % 2 or (p.encoder == "transformer" and p.hidden % p.attention_heads):
            raise UserError(f"sequence hidden ({p.hidden}) must be even and a multiple of attention_heads "
                            f"({p.attention_heads}) for the transformer")
        if p.kernel < 1 or p.stride < 1 or p.conv_layers < 0 or p.layers < 1 or p.max_frames < 0:
            raise UserError("sequence: kernel, stride and layers must be at least 1, conv_layers and max_frames "
                            "at least 0")
        self.frame_dims = frame_dims
        self.encoders = nn.ModuleDict({str(m): TemporalEncoder(d, p) for m, d in enumerate(frame_dims)
                                       if d is not None})
        fused = [p.hidden if d is not None else dims[m] for m, d in enumerate(frame_dims)]
        fusion_params = head_class(p.fusion).Params(hidden=p.hidden, dropout=p.dropout)
        self.fusion = build_head(p.fusion, fused, n_out, fusion_params)

    def forward(self, xs: list[Tensor], mask: Tensor, frames: list[tuple[Tensor, Tensor] | None]) -> Tensor:
        inputs = []
        for m, x in enumerate(xs):
            if str(m) not in self.encoders:
                inputs.append(x)
                continue
            batch = frames[m]
            if batch is None:
                raise ValueError(f"feature set {m} was built for frames but got none")
            inputs.append(self.encoders[str(m)](*batch))
        return self.fusion(inputs, mask)
