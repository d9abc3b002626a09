"""``svm``: a support-vector machine (libsvm through scikit-learn), linear or RBF kernel.

The standard classifier on openSMILE functionals: ``SVC``, or ``SVR`` for scores. Classes are separated
one against one, as libsvm does; the outputs are scikit-learn's one-vs-rest decision values (votes plus a
confidence below 1/3), so their arg max is the predicted class. They are scores, not probabilities: softmax
them only to rank classes. A linear kernel is saved as its coefficients, an RBF kernel as its support vectors
and dual coefficients (see :mod:`emostore.heads.classical`).

An RBF SVM needs its kernel matrix (rows x rows) in memory to train at a usable speed: a
training split too big for the memory available (or for ``memory_gb``) is refused before
fitting, with what to do instead. A linear SVM above 50,000 training rows (libsvm's time grows
with their square) or beyond the memory budget is trained by SGD on the hinge loss instead
(epsilon-insensitive for scores), streamed, one-vs-rest (see :mod:`emostore.heads.classical`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from emostore.errors import UserError
from emostore.heads.base import register
from emostore.heads.classical import ClassicalHead, ClassicalParams
from emostore.heads.memory import available_memory

KERNELS = ("linear", "rbf")
#: Test rows against support vectors per block when predicting with the RBF kernel.
BLOCK = 1024


@dataclass
class SVMParams(ClassicalParams):
    kernel: str = "linear"
    #: RBF width: "scale" (1 / (features x variance), scikit-learn's default), "auto" (1 / features)
    #: or a number.
    gamma: str = "scale"
    #: SVR only: no penalty for errors smaller than this.
    epsilon: float = 0.1
    #: Memory the RBF kernel matrix may use, in GiB (0: what the machine has available).
    memory_gb: float = 0.0
    #: Solver iterations (0: until converged).
    max_iter: int = 0


def pair_matrix(n_support: np.ndarray, dual: np.ndarray) -> np.ndarray:
    """libsvm's one-vs-one dual coefficients ``[K-1, S]`` as ``[S, P]``: the weight of each support
    vector in the decision of each class pair ``(i, j), i < j`` (zero outside the two classes)."""
    k = len(n_support)
    start = np.concatenate([[0], np.cumsum(n_support)])
    out = np.zeros((int(start[-1]), k * (k - 1) // 2))
    p = 0
    for i in range(k):
        for j in range(i + 1, k):
            si, sj = slice(start[i], start[i + 1]), slice(start[j], start[j + 1])
            out[si, p] = dual[j - 1, si]
            out[sj, p] = dual[i, sj]
            p += 1
    return out


def ovr_scores(dec: Tensor, k: int) -> Tensor:
    """scikit-learn's ``_ovr_decision_function``: one-vs-one decisions (positive: the first class
    of the pair) -> ``[B, K]`` votes plus a monotone confidence in (-1/3, 1/3)."""
    votes = torch.zeros(len(dec), k, dtype=dec.dtype, device=dec.device)
    conf = torch.zeros_like(votes)
    p = 0
    for i in range(k):
        for j in range(i + 1, k):
            conf[:, i] += dec[:, p]
            conf[:, j] -= dec[:, p]
            votes[:, i] += (dec[:, p] >= 0).to(dec.dtype)
            votes[:, j] += (dec[:, p] < 0).to(dec.dtype)
            p += 1
    return votes + conf / (3 * (conf.abs() + 1))


@register
class SVMHead(ClassicalHead):
    name = "svm"
    Params = SVMParams
    arrays = ("coef", "support_vectors", "dual_coef", "intercept", "gamma")

    @property  # type: ignore[override]
    def exact_max_rows(self) -> int | None:
        """libsvm's time grows with the square of the rows: a linear SVM streams above 50,000 (an RBF
        one is limited by its kernel matrix, see :meth:`check_size`)."""
        return 50_000 if self.params.kernel == "linear" else None  # type: ignore[attr-defined]

    def __init__(self, dims: list[int], n_out: int, params: SVMParams):
        super().__init__(dims, n_out, params)
        if params.kernel not in KERNELS:
            raise UserError(f"svm kernel must be one of {', '.join(KERNELS)}, got {params.kernel!r}")
        self._gamma()  # validates gamma early

    def _gamma(self) -> str | float:
        g = self.params.gamma  # type: ignore[attr-defined]
        if g in ("scale", "auto"):
            return g
        try:
            value = float(g)
        except ValueError:
            raise UserError(f"svm gamma must be scale, auto or a positive number, got {g!r}") from None
        if value <= 0:
            raise UserError(f"svm gamma must be positive, got {g!r}")
        return value

    def fitted_with(self) -> str:
        return f"kernel={self.params.kernel}, " + super().fitted_with()  # type: ignore[attr-defined]

    def check_size(self, n_rows: int) -> None:
        p: SVMParams = self.params  # type: ignore[assignment]
        if p.kernel != "rbf":
            return
        need = 8 * n_rows * n_rows
        have = int(p.memory_gb * 2**30) if p.memory_gb > 0 else available_memory()
        if need > have:
            raise UserError(
                f"svm kernel=rbf on {n_rows} training rows needs a {n_rows} x {n_rows} kernel matrix "
                f"({need / 2**30:.1f} GiB) but {have / 2**30:.1f} GiB of memory is available; use -p kernel=linear "
                f"or --head logreg (both scale to many rows), or train on fewer rows")

    def check_streamable(self, why: str) -> None:
        if self.params.kernel == "rbf":  # type: ignore[attr-defined]
            raise UserError(f"svm kernel=rbf: {why}, and the streaming solver is linear; use -p kernel=linear "
                            "or --head logreg (both stream), or train on fewer rows")
        super().check_streamable(why)

    def sgd_estimator(self, n_rows: int, seed: int) -> Any:
        from sklearn.linear_model import SGDClassifier, SGDRegressor

        p: SVMParams = self.params  # type: ignore[assignment]
        alpha = 1.0 / (p.C * max(n_rows, 1))
        if self.regression:
            return SGDRegressor(loss="epsilon_insensitive", epsilon=p.epsilon, alpha=alpha, random_state=seed)
        return SGDClassifier(loss="hinge", alpha=alpha, random_state=seed)

    def export_sgd(self, est: Any, classes: np.ndarray | None) -> None:
        super().export_sgd(est, classes)
        empty = torch.zeros(0, dtype=torch.float64)
        self.support_vectors, self.dual_coef, self.gamma = empty, empty.clone(), torch.tensor(0.0, dtype=torch.float64)

    def estimator(self, C: float, n_rows: int) -> Any:
        from sklearn.svm import SVC, SVR

        p: SVMParams = self.params  # type: ignore[assignment]
        cache_mb = max(200.0, min(2048.0, 8 * n_rows * n_rows / 2**20))
        common = {"C": C, "kernel": p.kernel, "gamma": self._gamma(), "cache_size": cache_mb,
                  "max_iter": p.max_iter if p.max_iter > 0 else -1}
        if self.regression:
            return SVR(epsilon=p.epsilon, **common)
        return SVC(decision_function_shape="ovo", **common)

    def fold_predict(self, C: float, X: np.ndarray, y: np.ndarray, weights: np.ndarray | None,
                     train: np.ndarray, test: np.ndarray) -> np.ndarray:
        """As fitting on ``X[train]``, with the kernel computed once for all folds and values of C."""
        from sklearn.svm import SVC, SVR

        p: SVMParams = self.params  # type: ignore[assignment]
        if getattr(self, "_gram_of", None) is not X:
            self._gram_of, self._gram = X, X @ X.T
            self._sq = np.diag(self._gram)
        gram = self._gram
        if p.kernel == "rbf":
            g = self._gamma()
            if g == "scale":
                g = 1.0 / (X.shape[1] * X[train].var()) if X[train].var() > 0 else 1.0
            elif g == "auto":
                g = 1.0 / X.shape[1]
            dist = np.maximum(self._sq[:, None] + self._sq[None, :] - 2 * gram, 0)
            gram = np.exp(-float(g) * dist)
        common = {"C": C, "kernel": "precomputed", "max_iter": p.max_iter if p.max_iter > 0 else -1}
        est = SVR(epsilon=p.epsilon, **common) if self.regression else SVC(**common)
        est.fit(gram[np.ix_(train, train)], y[train], sample_weight=None if weights is None else weights[train])
        return np.asarray(est.predict(gram[np.ix_(test, train)]))

    def export(self, est: Any) -> None:
        dual = np.asarray(est.dual_coef_, dtype=np.float64)
        intercept = np.asarray(est.intercept_, dtype=np.float64)
        sv = np.asarray(est.support_vectors_, dtype=np.float64)
        if self.regression:
            pairs = dual.T  # [S, 1]
        else:
            if len(est.classes_) == 2:  # scikit-learn flips binary models; undo it: positive = first class
                dual, intercept = -dual, -intercept
            pairs = pair_matrix(np.asarray(est.n_support_), dual)
        empty = torch.zeros(0, dtype=torch.float64)
        self.intercept = torch.from_numpy(intercept.copy())
        self.gamma = torch.tensor(float(getattr(est, "_gamma", 0.0)), dtype=torch.float64)
        if self.params.kernel == "linear":  # type: ignore[attr-defined]
            self.coef = torch.from_numpy(pairs.T @ sv)  # [P, F]
            self.support_vectors, self.dual_coef = empty, empty.clone()
        else:
            self.coef = empty
            self.support_vectors, self.dual_coef = torch.from_numpy(sv), torch.from_numpy(pairs)

    def decision(self, X: Tensor) -> Tensor:
        if self.params.kernel == "linear":  # type: ignore[attr-defined]
            return X @ self.coef.T + self.intercept
        sv = self.support_vectors
        sv_sq = (sv * sv).sum(1)
        parts = []
        for block in X.split(BLOCK):
            sq = ((block * block).sum(1, keepdim=True) + sv_sq - 2 * block @ sv.T).clamp(min=0)
            parts.append(torch.exp(-self.gamma * sq) @ self.dual_coef + self.intercept)
        return torch.cat(parts) if parts else torch.zeros(0, len(self.intercept), dtype=X.dtype)

    def outputs(self, dec: Tensor) -> Tensor:
        if self.regression:
            return dec
        if self.params.solver == "sgd":  # type: ignore[attr-defined]
            return self.linear_outputs(dec)
        return self.scatter(ovr_scores(dec, len(self.classes)))
