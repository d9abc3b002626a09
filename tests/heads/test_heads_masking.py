"""A missing modality is masked, never data: standardisation, garbage in masked rows, dropout."""

from __future__ import annotations

import heads_stores
import numpy as np
import pytest
import torch

from emostore.heads.data import MIN_STD, load_data
from emostore.heads.evaluate import evaluate_data
from emostore.heads.train import TrainConfig, fit, predict_rows

HEADS = ["linear", "mlp", "late", "gated", "attention", "context", "knn"]


@pytest.fixture(scope="module", params=["sample", "meld"])
def store(request, tmp_path_factory, minilm_encoder):
    return heads_stores.partial_store(tmp_path_factory, minilm_encoder, request.param)


@pytest.fixture(scope="module")
def data(store):
    return load_data(store, ["text/minilm", "text/partial"], "emotion")


@pytest.fixture(scope="module")
def meld_data(tmp_path_factory, minilm_encoder):
    return load_data(heads_stores.partial_store(tmp_path_factory, minilm_encoder, "meld"),
                     ["text/minilm", "text/partial"], "emotion")


def test_masks_and_train_only_standardisation(store, data) -> None:
    _, X, mask = store.feature_set("text/partial").read()
    assert 0.25 < 1 - mask.mean() < 0.42 and np.isnan(X[~mask]).all()
    assert torch.equal(data.mask[:, 1], torch.from_numpy(mask)) and data.mask[:, 0].all()
    assert (data.xs[1][~data.mask[:, 1]] == 0).all()
    train = data.split == "train"
    ref = X[train & mask].astype(np.float64)
    assert np.allclose(data.norm["text/partial"]["mean"], ref.mean(0), rtol=1e-5, atol=1e-7)
    std = ref.std(0)
    assert (std < MIN_STD).any()  # this feature set has a constant dimension: divided by 1, not by 0
    assert np.allclose(data.norm["text/partial"]["std"], np.where(std < MIN_STD, 1.0, std), rtol=1e-5, atol=1e-7)
    z = data.xs[1].numpy()[train & mask]
    assert np.abs(z.mean(0)).max() < 1e-4 and np.allclose(z.std(0)[std >= MIN_STD], 1, atol=1e-3)
    # dev and test rows play no part in the statistics
    z_test = data.xs[1].numpy()[(data.split == "test") & mask]
    assert np.abs(z_test.mean(0)).max() > 1e-3


@pytest.mark.parametrize("head", HEADS)
def test_garbage_in_masked_rows_changes_no_prediction(data, head: str) -> None:
    model = fit(data, head, config=TrainConfig(epochs=3, patience=5, modality_dropout=0.3, device="cpu")).model
    rows = np.arange(len(data))
    before = predict_rows(model, data, rows)
    missing = ~data.mask[:, 1]
    clean = data.xs[1].clone()
    garbage = torch.randn(int(missing.sum()), data.dims[1]) * 1e3
    garbage[::7] = torch.nan
    try:
        data.xs[1][missing] = garbage
        after = predict_rows(model, data, rows)
        assert torch.isfinite(after).all()
        assert torch.equal(before, after), head
        # the same garbage in rows where the modality is present does change predictions
        present = torch.nonzero(data.mask[:, 1]).flatten()[: int(missing.sum())]
        data.xs[1][missing] = clean[missing]
        data.xs[1][present] = torch.nan_to_num(garbage[: len(present)], nan=5.0)
        changed = predict_rows(model, data, rows)
        assert not torch.equal(before, changed), head
    finally:
        data.xs[1] = clean


def test_modality_dropout_lets_one_modality_predict_alone(meld_data) -> None:
    """Trained on both feature sets, the model still predicts with the second one removed (an
    accuracy claim, so on real MELD text; the masking guarantees above run on the sample too)."""
    data = meld_data
    config = TrainConfig(epochs=25, patience=5, modality_dropout=0.5, device="cpu")
    model = fit(data, "mlp", config=config).model
    full = evaluate_data(model, data, "test").metrics["weighted_f1"]
    saved = data.mask.clone()
    try:
        data.mask[:, 1] = False
        alone = evaluate_data(model, data, "test").metrics["weighted_f1"]
    finally:
        data.mask = saved
    baseline = heads_stores.majority_weighted_f1(data)
    assert alone > baseline + 0.08, (alone, baseline)
    assert alone > full - 0.06, (alone, full)
