"""``logreg``: multinomial logistic regression (scikit-learn, L2 penalty, lbfgs).

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

    def __init__(self, dims: list[int], n_out: int, params: LogRegParams):
        super().__init__(dims, n_out, params)
        if n_out == 1:
            raise UserError("logreg is a classifier; for sentiment scores use --head svm (an SVR) or linear")

    def estimator(self, C: float, n_rows: int) -> Any:
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=C, max_iter=self.params.max_iter)  # type: ignore[attr-defined]

    def export(self, est: Any) -> None:
        self.coef = torch.from_numpy(np.asarray(est.coef_, dtype=np.float64).copy())
        self.intercept = torch.from_numpy(np.asarray(est.intercept_, dtype=np.float64).copy())

    def decision(self, X: Tensor) -> Tensor:
        return X @ self.coef.T + self.intercept

    def outputs(self, dec: Tensor) -> Tensor:
        if dec.shape[1] == 1:  # two classes: scikit-learn keeps one logit, for the second class
            dec = torch.cat([torch.zeros_like(dec), dec], 1)
        return self.scatter(dec)
