"""Fused multimodal vectors from a trained head: its penultimate layer over every store row."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emostore.errors import UserError
from emostore.search.index import normalise
from emostore.store import Store


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _final_linear(model: nn.Module) -> tuple[nn.Module, str | int] | None:
    """Where the head's last linear layer (the classifier) sits: (parent, key)."""
    out = getattr(model, "out", None)
    if isinstance(out, nn.Linear):
        return model, "out"
    if isinstance(out, nn.Sequential) and isinstance(out[-1], nn.Linear):
        return out, len(out) - 1
    return None


@torch.no_grad()
def checkpoint_vectors(store: Store, checkpoint: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(rows, vectors, meta)``: the input of the head's classifier layer for each row with any
    modality present (heads without one, such as ``late`` and ``knn``, give their fused inputs)."""
    from emostore.heads import checkpoint as ckpt_io
    from emostore.heads.base import fuse
    from emostore.heads.train import predict_rows

    ck = ckpt_io.load(Path(checkpoint), store)
    data = ck.load_data(store)
    rows = np.flatnonzero(data.mask.numpy().any(1))
    if not len(rows):
        raise UserError(f"{store.url}: no row has any of {', '.join(ck.feature_sets)}")
    model = ck.model.eval()
    where = _final_linear(model)
    if where is None:
        vectors = fuse(data.features(rows), data.mask[torch.as_tensor(rows)]).numpy()
        layer = "fused inputs"
    else:
        parent, key = where
        linear = parent[key] if isinstance(key, int) else getattr(parent, key)
        n_out = model.n_out
        try:
            if isinstance(key, int):
                parent[key] = nn.Identity()
            else:
                setattr(parent, key, nn.Identity())
            model.n_out = linear.in_features
            vectors = predict_rows(model, data, rows).numpy()
        finally:
            if isinstance(key, int):
                parent[key] = linear
            else:
                setattr(parent, key, linear)
            model.n_out = n_out
        layer = "penultimate"
    meta = {"feature_sets": ck.feature_sets, "checkpoint": str(Path(checkpoint).resolve()),
            "checkpoint_hash": file_hash(Path(checkpoint) / ckpt_io.WEIGHTS), "head": ck.head, "layer": layer}
    return rows, normalise(vectors.astype(np.float32)), meta
