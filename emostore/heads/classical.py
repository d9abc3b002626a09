"""What the scikit-learn heads (``svm``, ``logreg``) share: fitting on the early fusion of the
standardised feature sets, choosing ``C`` inside the training rows, and exporting the fitted
model to plain arrays.

Fitting runs scikit-learn once (``remember``); the head keeps only arrays as float64 buffers
(coefficients and intercepts, or support vectors and dual coefficients), which the checkpoint
writes to safetensors. Prediction computes the decision function from those arrays in torch, so
``predict``, ``serve`` and ``evaluate`` never unpickle anything, and a loaded checkpoint gives
bit for bit the outputs of the one that was saved.

Inputs are the masked feature sets followed by their mask flags (:func:`emostore.heads.base.fuse`),
standardised on the training rows by :func:`emostore.heads.data.load_data` (per speaker first
with ``--speaker-norm``). ``C_grid`` picks ``C`` by cross-validation on the training rows only:
one fold per speaker when the rows have at least three speakers, else five stratified folds.

Above what the exact solvers can take (the training rows in float64 beyond the memory budget, or
more rows than the solver handles in reasonable time, :attr:`ClassicalHead.exact_max_rows`),
``-p solver=auto`` switches to a streaming linear solver (:mod:`emostore.heads.at_once`): SGD
with the same loss (log loss for ``logreg``, hinge or epsilon-insensitive for ``svm``), one-vs-rest,
``alpha = 1 / (C x rows)``. Its coefficients are saved and applied like the exact ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from emostore.errors import UserError
from emostore.heads.base import Head, HeadParams, fuse
from emostore.heads.memory import gib

#: Output for a class the training rows never had (it can never win).
ABSENT = -1e9


@dataclass
class ClassicalParams(HeadParams):
    hidden: int = 0
    dropout: float = 0.0
    #: Inverse regularisation strength.
    C: float = 1.0
    #: Candidate values of C separated by ";" or spaces (e.g. "0.001;0.01;0.1;1"), chosen by
    #: cross-validation on the training rows; empty: use ``C``.
    C_grid: str = ""
    #: Solver iterations.
    max_iter: int = 5000
    #: exact (scikit-learn's libsvm or lbfgs, in memory), sgd (a streaming linear solver) or auto
    #: (exact while the training rows fit the memory budget and the solver's size; the checkpoint
    #: records the one used).
    solver: str = "auto"
    #: Passes over the training rows of the streaming solver.
    sgd_passes: int = 5


SOLVERS = ("auto", "exact", "sgd")


def parse_grid(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(";", " ").replace("|", " ").split()]
    except ValueError:
        raise UserError(f"C_grid: cannot read {text!r}; give numbers separated by ';', e.g. 0.01;0.1;1") from None
    if not values or min(values) <= 0:
        raise UserError(f"C_grid: need positive values, got {text!r}")
    return values


def cv_splits(y: np.ndarray, groups: list[str] | None, regression: bool) -> Any:
    """Leave one speaker out when at least three speakers are known for every row, else 5 folds."""
    from sklearn.model_selection import KFold, LeaveOneGroupOut, StratifiedKFold

    if groups is not None and all(groups) and len(set(groups)) >= 3:
        return list(LeaveOneGroupOut().split(y, y, groups))
    if regression:
        return list(KFold(5, shuffle=True, random_state=0).split(y))
    counts = np.bincount(y)
    folds = max(2, min(5, int(counts[counts > 0].min())))
    return list(StratifiedKFold(folds, shuffle=True, random_state=0).split(y, y))


def C_choice_note(C: float, grid: list[float], scores: list[float], folds: int, by_speaker: bool,
                  regression: bool) -> str:
    """``C=0.1 chosen from 0.01, 0.1, 1 by 5-fold cross-validation on the training rows (...)``."""
    by = f"leave-one-speaker-out ({folds} speakers)" if by_speaker else f"{folds}-fold"
    metric = "mean absolute error" if regression else "unweighted average recall"
    best = -max(scores) if regression else max(scores)
    return (f"C={C:g} chosen from {', '.join(f'{c:g}' for c in grid)} by {by} cross-validation on the training "
            f"rows ({metric} {best:.4f})")


class ClassicalHead(Head):
    """Base of the scikit-learn heads: subclasses make the estimator and export/apply its arrays."""

    trainable = False
    #: Buffers this head saves (float64 arrays, plus ``classes`` as int64).
    arrays: tuple[str, ...] = ()
    #: Most training rows the exact solver takes with ``solver=auto`` (its time grows faster than
    #: the rows); None: limited by memory only.
    exact_max_rows: int | None = None

    def __init__(self, dims: list[int], n_out: int, params: ClassicalParams):
        super().__init__(dims, n_out, params)
        for key in self.arrays:
            self.register_buffer(key, torch.zeros(0, dtype=torch.float64))
        self.register_buffer("classes", torch.zeros(0, dtype=torch.long))

    @property
    def regression(self) -> bool:
        return self.n_out == 1

    #: How ``C`` was chosen by ``-p C_grid`` (empty when it was given).
    C_choice: str = ""

    def fitted_with(self) -> str:
        p: ClassicalParams = self.params  # type: ignore[assignment]
        return f"C={p.C:g}" + ("" if p.solver == "exact" else f", {p.solver} solver")

    # ----- fitting -----------------------------------------------------------------------
    def estimator(self, C: float, n_rows: int) -> Any:
        raise NotImplementedError

    def export(self, est: Any) -> None:
        """Copy the fitted estimator's arrays into the buffers."""
        raise NotImplementedError

    def check_size(self, n_rows: int) -> None:
        """Refuse before fitting when the problem cannot fit in memory."""

    # ----- solver choice and the streaming solver -------------------------------------------
    def choose_solver(self, n_rows: int, n_features: int, budget: int) -> str:
        """``exact`` or ``sgd`` for ``n_rows`` training rows of ``n_features`` (recorded in the
        parameters); refuses, in one line saying what to do, what neither can do."""
        p: ClassicalParams = self.params  # type: ignore[assignment]
        if p.solver not in SOLVERS:
            raise UserError(f"{self.name} solver must be one of {', '.join(SOLVERS)}, got {p.solver!r}")
        need = 3 * 8 * n_rows * n_features  # float64 rows, and the solver's working copies
        over = (f"{n_rows:,} training rows x {n_features} features need about {gib(need)} in memory for the "
                f"exact solver, over the memory budget ({gib(budget)})") if need > budget else None
        slow = self.exact_max_rows is not None and n_rows > self.exact_max_rows
        if p.solver == "exact" and over:
            raise UserError(f"{self.name} -p solver=exact: {over}; use -p solver=sgd (streams the rows) or raise "
                            "--memory-budget")
        sgd = p.solver == "sgd" or (p.solver == "auto" and (over is not None or slow))
        if sgd:
            self.check_streamable(over or f"{n_rows:,} training rows are above what the exact solver takes in "
                                          f"reasonable time ({self.exact_max_rows:,})")
        p.solver = "sgd" if sgd else "exact"
        return p.solver

    def check_streamable(self, why: str) -> None:
        """Refuse the streaming solver where it cannot stand in for the exact one."""
        if self.params.C_grid:  # type: ignore[attr-defined]
            raise UserError(f"{self.name}: {why}, so it uses the streaming solver, and -p C_grid cross-validates in "
                            "memory; give -p C=VALUE instead, or raise --memory-budget")

    def sgd_estimator(self, n_rows: int, seed: int) -> Any:
        """The streaming estimator with this head's loss (``alpha = 1 / (C x rows)``)."""
        raise NotImplementedError

    def export_sgd(self, est: Any, classes: np.ndarray | None) -> None:
        """Copy a fitted streaming estimator's coefficients into the buffers."""
        coef = np.atleast_2d(np.asarray(est.coef_, dtype=np.float64))
        self.coef = torch.from_numpy(coef.copy())
        self.intercept = torch.from_numpy(np.atleast_1d(np.asarray(est.intercept_, dtype=np.float64)).copy())
        if classes is not None:
            self.classes = torch.as_tensor(np.asarray(classes, dtype=np.int64))

    def linear_outputs(self, dec: Tensor) -> Tensor:
        """One-vs-rest decision values -> outputs: scores of the training classes, absent classes
        at :data:`ABSENT`; a two-class model's single value is the second class's."""
        if dec.shape[1] == 1:
            dec = torch.cat([torch.zeros_like(dec), dec], 1)
        return self.scatter(dec)

    def remember(self, xs: list[Tensor], mask: Tensor, y: Tensor, weights: Tensor | None = None,
                 groups: list[str] | None = None) -> None:
        p: ClassicalParams = self.params  # type: ignore[assignment]
        X = fuse(xs, mask).detach().cpu().double().numpy()
        target = y.detach().cpu().numpy()
        sample_weight = None if weights is None else weights.detach().cpu().double().numpy()
        if not self.regression and len(np.unique(target)) < 2:
            raise UserError(f"head {self.name!r} needs at least 2 classes among the training rows")
        self.check_size(len(X))
        C = p.C
        if p.C_grid:
            C = self._choose_C(X, target, sample_weight, groups, parse_grid(p.C_grid))
            p.C = C  # recorded in the checkpoint's parameters
        est = self.estimator(C, len(X))
        est.fit(X, target.astype(np.float64) if self.regression else target, sample_weight=sample_weight)
        if not self.regression:
            self.classes = torch.as_tensor(np.asarray(est.classes_, dtype=np.int64))
        self.export(est)

    def _choose_C(self, X: np.ndarray, y: np.ndarray, weights: np.ndarray | None, groups: list[str] | None,
                  grid: list[float]) -> float:
        from sklearn.metrics import balanced_accuracy_score, mean_absolute_error

        folds = cv_splits(y, groups, self.regression)
        scores = []
        for C in grid:
            truth, pred = [], []
            for tr, te in folds:
                truth.append(y[te])
                pred.append(self.fold_predict(C, X, y, weights, tr, te))
            t, q = np.concatenate(truth), np.concatenate(pred)
            # pooled over the folds: unweighted average recall, or minus the mean absolute error
            scores.append(-mean_absolute_error(t, q) if self.regression else balanced_accuracy_score(t, q))
        self.__dict__.pop("_gram_of", None)  # drop cached kernels
        self.__dict__.pop("_gram", None)
        self.__dict__.pop("_sq", None)
        best = float(grid[int(np.argmax(scores))])
        by_speaker = groups is not None and all(groups) and len(set(groups)) >= 3  # as cv_splits chose
        self.C_choice = C_choice_note(best, grid, scores, len(folds), by_speaker, self.regression)
        return best

    def fold_predict(self, C: float, X: np.ndarray, y: np.ndarray, weights: np.ndarray | None,
                     train: np.ndarray, test: np.ndarray) -> np.ndarray:
        """Predictions for rows ``test`` of a model fitted with ``C`` on rows ``train``."""
        est = self.estimator(C, len(train))
        est.fit(X[train], y[train], sample_weight=None if weights is None else weights[train])
        return np.asarray(est.predict(X[test]))

    # ----- prediction --------------------------------------------------------------------
    def decision(self, X: Tensor) -> Tensor:
        """``[B, P]`` float64 decision values of the fitted model."""
        raise NotImplementedError

    def outputs(self, dec: Tensor) -> Tensor:
        """Decision values -> ``[B, n_out]`` outputs (class scores, or the regression score)."""
        raise NotImplementedError

    def forward(self, xs: list[Tensor], mask: Tensor) -> Tensor:
        if not len(self.intercept):
            raise RuntimeError(f"head {self.name!r} has not been fitted")
        X = fuse(xs, mask).double()
        return self.outputs(self.decision(X)).float()

    def scatter(self, scores: Tensor) -> Tensor:
        """Scores of the training classes placed in the ``n_out`` outputs (absent classes: ABSENT)."""
        out = torch.full((len(scores), self.n_out), ABSENT, dtype=scores.dtype, device=scores.device)
        out[:, self.classes] = scores
        return out

    def load_weights(self, state: dict[str, Tensor]) -> None:
        missing = [k for k in ("classes", *self.arrays) if k not in state]
        if missing:
            raise KeyError(f"{self.name} checkpoint lacks {', '.join(missing)}")
        for key, value in state.items():
            setattr(self, key, value)
