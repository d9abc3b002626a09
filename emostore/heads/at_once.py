"""Heads fitted in one go rather than by epochs: ``knn``, ``svm`` and ``logreg``.

The scikit-learn heads use an exact solver (libsvm, lbfgs) on the training rows held in memory
when those fit the memory budget and the solver's practical size; beyond that they fall back to
a streaming linear solver (``SGDClassifier`` / ``SGDRegressor`` with ``partial_fit``) that reads
the training rows a window at a time, in an order drawn from ``--seed``, for ``-p sgd_passes``
passes (see :meth:`emostore.heads.classical.ClassicalHead.choose_solver`). ``knn`` keeps every
training row, so it refuses features that do not fit the budget.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from emostore.errors import UserError
from emostore.heads.base import Head, fuse, fused_dim
from emostore.heads.classical import ClassicalHead
from emostore.heads.data import HeadData
from emostore.heads.memory import gib

#: Rows per ``partial_fit`` call (their fused float64 copy is what it holds at once).
SGD_BLOCK = 65536


def fit_at_once(model: Head, data: HeadData, train_rows: np.ndarray, weights: Tensor | None, config: Any,
                notes: list[str]) -> dict[str, Any]:
    """Fit ``model`` on ``train_rows``; returns what to record in the history (rows seen, passes)."""
    if isinstance(model, ClassicalHead):
        solver = model.choose_solver(len(train_rows), fused_dim(data.dims), data.budget)
        if solver == "sgd":
            p = model.params
            notes.append(f"{model.name}: streaming linear solver (SGD, {p.sgd_passes} passes) on "  # type: ignore[attr-defined]
                         f"{len(train_rows):,} training rows")
            return fit_sgd(model, data, train_rows, weights, config.seed)
    elif data.streamed:
        need = 4 * len(train_rows) * sum(data.dims)
        raise UserError(f"head {model.name!r} keeps every training row in memory ({len(train_rows):,} rows, "
                        f"{gib(need)}), but the features do not fit the memory budget ({gib(data.budget)}); "
                        "use --head logreg or mlp, or raise --memory-budget")
    device = data.mask.device
    idx = torch.as_tensor(train_rows, device=device)
    row_w = None if weights is None else weights.to(device)[data.y[idx]]
    groups = None if data.groups is None else [str(g) for g in data.groups[train_rows]]
    model.remember(data.features(train_rows), data.mask[idx], data.y[idx], row_w, groups)
    if isinstance(model, ClassicalHead) and model.C_choice:
        notes.append(f"{model.name}: {model.C_choice}")
    return {"rows_seen": len(train_rows)}


def fit_sgd(model: ClassicalHead, data: HeadData, train_rows: np.ndarray, weights: Tensor | None,
            seed: int) -> dict[str, Any]:
    """Passes of ``partial_fit`` over the training rows, a window (shuffled) and a block at a time."""
    y_all = data.y.cpu().numpy()
    classes = None if model.regression else np.unique(y_all[train_rows])
    if classes is not None and len(classes) < 2:
        raise UserError(f"head {model.name!r} needs at least 2 classes among the training rows")
    est = model.sgd_estimator(len(train_rows), seed)
    rng = np.random.default_rng(seed)
    w = None if weights is None else weights.cpu().numpy()
    passes, seen = int(model.params.sgd_passes), []  # type: ignore[attr-defined]
    for _ in range(passes):
        count = 0
        for window, local in data.windows(train_rows, rng):
            rows = np.asarray(local)[rng.permutation(len(local))]
            for lo in range(0, len(rows), SGD_BLOCK):
                part = torch.as_tensor(rows[lo:lo + SGD_BLOCK], device=window.mask.device)
                X = fuse([x[part] for x in window.xs], window.mask[part]).cpu().double().numpy()
                y = window.y[part].cpu().numpy()
                extra = {} if classes is None else {"classes": classes}
                est.partial_fit(X, y, sample_weight=None if w is None else w[y], **extra)
                count += len(y)
        seen.append(count)
    model.export_sgd(est, classes)
    return {"rows_seen": seen[-1], "passes": passes}
