"""Sentiment regression on CMU-MOSI (text only) and the metric definitions."""

from __future__ import annotations

import heads_stores
import numpy as np
import pytest
from sklearn.metrics import mean_absolute_error

from emostore.heads.data import load_data
from emostore.heads.evaluate import classification_metrics, evaluate_data, regression_metrics
from emostore.heads.train import TrainConfig, fit


@pytest.fixture(scope="module")
def mosi(tmp_path_factory, minilm_encoder):
    return load_data(heads_stores.mosi_store(tmp_path_factory, minilm_encoder), ["text/minilm"], "sentiment")


def test_mosi_target_is_a_score(mosi) -> None:
    assert mosi.target.regression and mosi.target.column == "sentiment_score"
    assert (len(mosi.rows("train")), len(mosi.rows("dev")), len(mosi.rows("test"))) == (1284, 229, 686)


@pytest.mark.parametrize("head", ["mlp", "context", "knn"])
def test_mosi_regression(mosi, head: str) -> None:
    result = fit(mosi, head, config=TrainConfig(epochs=30, patience=6, device="cpu"))
    assert result.metric == "dev_mae"
    m = evaluate_data(result.model, mosi, "test").metrics
    y = mosi.y.numpy()
    constant = mean_absolute_error(y[mosi.rows("test")], np.full(686, y[mosi.rows("train")].mean()))
    assert m["mae"] < constant - 0.1, (head, m["mae"], constant)
    assert m["corr"] > 0.35 and m["acc2"] > 0.62, (head, m)
    assert set(m) >= {"mae", "corr", "acc2", "acc2_nonneg", "acc7", "f1", "f1_nonneg"}


def test_regression_metrics_by_hand() -> None:
    m = regression_metrics(np.array([-2, -0.5, 0, 1, 2.5]), np.array([-1, 0.5, -0.2, 1.4, 2.0]))
    assert m["mae"] == pytest.approx(3.1 / 5)
    assert m["acc2"] == pytest.approx(3 / 4) and m["n_nonzero"] == 4   # the zero truth is left out
    assert m["acc2_nonneg"] == pytest.approx(3 / 5)                    # -0.2 < 0 against a 0 truth
    assert m["acc7"] == pytest.approx(4 / 5)                            # -2 vs -1 is the only miss
    assert m["corr"] == pytest.approx(np.corrcoef([-2, -0.5, 0, 1, 2.5], [-1, 0.5, -0.2, 1.4, 2.0])[0, 1])
    assert 0 < m["f1"] < 1 and 0 < m["f1_nonneg"] < 1


def test_classification_metrics_by_hand() -> None:
    truth, pred = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 0, 2])
    m = classification_metrics(truth, pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["confusion_matrix_normalised"][0] == [0.5, 0.5, 0.0]
    assert m["per_class"]["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8),
                                   "support": 2}
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
