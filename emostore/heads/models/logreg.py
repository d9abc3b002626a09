"""``logreg``: multinomial logistic regression (scikit-learn, L2 penalty, lbfgs); beyond 200,000
training rows or the memory budget, one-vs-rest logistic regression by SGD, streamed.

Its outputs are the logits, so their softmax is scikit-learn's ``predict_proba``: calibrated
class probabilities, the ones to use for late fusion. Saved as coefficients and intercepts (see
:mod:`emostore.heads.classical`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from emostore.errors import UserError
from emostore.heads.base import register
from emostore.heads.classical import ClassicalHead, ClassicalParams


@dataclass
class LogRegParams(ClassicalParams):
    pass


@register
class LogRegHead(ClassicalHead):
    name = "logreg"
    Params = LogRegParams
    arrays = ("coef", "intercept")
    exact_max_rows = 200_000

    def __init__(self, dims: list[int], n_out: int, params: LogRegParams):
        super().__init__(dims, n_out, params)
        if n_out == 1:
            raise UserError("logreg is a classifier; for sentiment scores use --head svm (an SVR) or linear")

    def estimator(self, C: float, n_rows: int) -> Any:
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=C, max_iter=self.params.max_iter)  # type: ignore[attr-defined]

    def sgd_estimator(self, n_rows: int, seed: int) -> Any:
        from sklearn.linear_model import SGDClassifier

        return SGDClassifier(loss="log_loss", alpha=1.0 / (self.params.C * max(n_rows, 1)),  # type: ignore[attr-defined]
                             random_state=seed)

    def export(self, est: Any) -> None:
        self.coef = torch.from_numpy(np.asarray(est.coef_, dtype=np.float64).copy())
        self.intercept = torch.from_numpy(np.asarray(est.intercept_, dtype=np.float64).copy())

    def decision(self, X: Tensor) -> Tensor:
        return X @ self.coef.T + self.intercept

    def outputs(self, dec: Tensor) -> Tensor:
        return self.linear_outputs(dec)  # two classes: scikit-learn keeps one logit, for the second class
