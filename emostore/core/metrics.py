"""The metrics every command reports (``evaluate --json`` keys), with scikit-learn.

Classification: accuracy, per-class precision/recall/F1, macro and weighted averages and the
confusion matrix. Regression on sentiment scores in [-3, 3] (CMU-MOSI/MOSEI conventions): MAE,
Pearson correlation, Acc-2 both ways (negative vs positive over non-zero truths, and negative vs
non-negative over all), their weighted F1, Acc-7.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import pearsonr
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    precision_recall_fscore_support,
)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Metrics of integer class predictions against integer truths (indices into ``labels``)."""
    ks = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ks, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=ks)
    rows = cm.sum(1, keepdims=True)
    out: dict[str, Any] = {
        "task": "classification",
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=ks, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=ks, average="macro", zero_division=0)),
        "per_class": {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, lab in enumerate(labels)},
        "labels": list(labels),
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalised": np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0).round(4).tolist(),
    }
    for avg in ("macro", "weighted"):
        ap, ar, _, _ = precision_recall_fscore_support(y_true, y_pred, labels=ks, average=avg, zero_division=0)
        out[f"{avg}_precision"], out[f"{avg}_recall"] = float(ap), float(ar)
    return out


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Sentiment-score metrics; ``acc2``/``f1`` exclude zero truths, ``*_nonneg`` keep them."""
    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    nonzero = y_true != 0
    out: dict[str, Any] = {
        "task": "regression",
        "n": len(y_true),
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "corr": float(pearsonr(y_true, y_pred)[0]) if len(y_true) > 1 and np.std(y_pred) > 0 else float("nan"),
        "acc7": float(accuracy_score(np.clip(np.round(y_true), -3, 3).astype(int),
                                     np.clip(np.round(y_pred), -3, 3).astype(int))),
        "acc2": float(accuracy_score(y_true[nonzero] > 0, y_pred[nonzero] > 0)) if nonzero.any() else float("nan"),
        "f1": float(f1_score(y_true[nonzero] > 0, y_pred[nonzero] > 0, average="weighted", zero_division=0))
        if nonzero.any() else float("nan"),
        "acc2_nonneg": float(accuracy_score(y_true >= 0, y_pred >= 0)),
        "f1_nonneg": float(f1_score(y_true >= 0, y_pred >= 0, average="weighted", zero_division=0)),
        "n_nonzero": int(nonzero.sum()),
    }
    return out
