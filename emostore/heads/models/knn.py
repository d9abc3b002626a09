"""``knn``: a similarity-weighted vote of the k nearest training rows (exact cosine).

Similarity is the cosine per feature set, averaged over the feature sets present in both the
query and the training row; pairs sharing none are never neighbours. When every query and
training row has all its feature sets (the common case), the neighbours come from a FAISS
inner-product index over the concatenated, scaled vectors, which is the same similarity; with
missing modalities, or without FAISS, an exact search in torch. Classification returns
log vote shares, regression the weighted mean score. Nothing is trained: :meth:`remember`
keeps the (standardised) training rows as buffers, which the checkpoint saves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from emostore.heads.base import Head, HeadParams, masked, register

QUERY_BLOCK = 1024


@dataclass
class KNNParams(HeadParams):
    hidden: int = 0
    dropout: float = 0.0
    k: int = 20
    #: Weight of a neighbour's vote: exp(similarity / temperature).
    temperature: float = 0.1
    #: Neighbour search: auto (FAISS when installed and no modality is missing), faiss or torch.
    backend: str = "auto"


@register
class KNNHead(Head):
    name = "knn"
    Params = KNNParams
    trainable = False

    def __init__(self, dims: list[int], n_out: int, params: KNNParams):
        super().__init__(dims, n_out, params)
        for m, d in enumerate(dims):
            self.register_buffer(f"memory_{m}", torch.zeros(0, d))
        self.register_buffer("memory_mask", torch.zeros(0, len(dims), dtype=torch.bool))
        self.register_buffer("memory_y", torch.zeros(0))
        self.register_buffer("memory_weight", torch.zeros(0))

    def fitted_with(self) -> str:
        p: KNNParams = self.params  # type: ignore[assignment]
        return f"k={p.k} neighbours of {len(self.memory_y)} training rows, temperature {p.temperature:g}"

    def _memory(self, m: int) -> Tensor:
        return getattr(self, f"memory_{m}")

    def remember(self, xs: list[Tensor], mask: Tensor, y: Tensor, weights: Tensor | None = None,
                 groups: list[str] | None = None) -> None:
        for m, x in enumerate(xs):
            setattr(self, f"memory_{m}", F.normalize(masked(x, mask[:, m]), dim=-1))
        self.memory_mask = mask.clone()
        self.memory_y = y.float().clone()
        self.memory_weight = torch.ones(len(y), device=y.device) if weights is None else weights.float().clone()

    def load_weights(self, state: dict[str, Tensor]) -> None:
        for key in ["memory_mask", "memory_y", "memory_weight"] + [f"memory_{m}" for m in range(len(self.dims))]:
            if key not in state:
                raise KeyError(f"knn checkpoint lacks {key}")
        for key, value in state.items():
            setattr(self, key, value)

    def _faiss_index(self):  # type: ignore[no-untyped-def]
        """A flat inner-product FAISS index of the memory (built once, dropped when it changes)."""
        import faiss

        key = (self.memory_y.data_ptr(), len(self.memory_y))
        if getattr(self, "_index_key", None) != key:
            scale = len(self.dims) ** -0.5
            memory = torch.cat([self._memory(m) * scale for m in range(len(self.dims))], 1)
            index = faiss.IndexFlatIP(memory.shape[1])
            index.add(memory.detach().cpu().float().numpy())
            self._index, self._index_key = index, key
        return self._index

    def _use_faiss(self, mask: Tensor) -> bool:
        p: KNNParams = self.params  # type: ignore[assignment]
        if p.backend == "torch" or not bool(mask.all()) or not bool(self.memory_mask.all()):
            if p.backend == "faiss" and not (bool(mask.all()) and bool(self.memory_mask.all())):
                raise ValueError("knn backend faiss needs every modality present; use auto or torch")
            return False
        try:
            import faiss  # noqa: F401
        except ImportError:
            if p.backend == "faiss":
                raise
            return False
        return True

    def forward(self, xs: list[Tensor], mask: Tensor) -> Tensor:
        return torch.cat([self._forward(xs_b, mask_b) for xs_b, mask_b in
                          zip(zip(*(x.split(QUERY_BLOCK) for x in xs)), mask.split(QUERY_BLOCK))])

    def _forward(self, xs: tuple[Tensor, ...], mask: Tensor) -> Tensor:
        p: KNNParams = self.params  # type: ignore[assignment]
        k = min(p.k, len(self.memory_y))
        if self._use_faiss(mask):
            scale = len(self.dims) ** -0.5
            q = torch.cat([F.normalize(x, dim=-1) * scale for x in xs], 1).detach().cpu().float().numpy()
            top_np, idx_np = self._faiss_index().search(q, k)
            top = torch.from_numpy(top_np).to(mask.device)
            idx = torch.from_numpy(idx_np).to(mask.device)
        else:
            top, idx = self._exact(xs, mask, k)
        w = torch.exp((top - top[:, :1]) / p.temperature) * self.memory_weight[idx]
        w = torch.where(torch.isfinite(top), w, torch.zeros_like(w))
        w = w / w.sum(1, keepdim=True).clamp(min=1e-12)
        y = self.memory_y[idx]
        if self.n_out == 1:
            return (w * y).sum(1, keepdim=True)
        votes = torch.zeros(len(w), self.n_out, device=w.device).scatter_add_(1, y.long(), w)
        return torch.log(votes + 1e-6)

    def _exact(self, xs: tuple[Tensor, ...], mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
        mm = self.memory_mask.float()
        shared = mask.float() @ mm.T                                  # feature sets in common
        sim = torch.zeros_like(shared)
        for m, x in enumerate(xs):
            q = F.normalize(masked(x, mask[:, m]), dim=-1)
            sim += (q @ self._memory(m).T) * mask[:, m:m + 1].float() * mm[:, m]
        sim = torch.where(shared > 0, sim / shared.clamp(min=1), torch.full_like(sim, -torch.inf))
        return sim.topk(k, dim=1)
