"""Checkpoints: safetensors + JSON round trip, no unpickling, refusal of a different store."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

from emostore.errors import UserError
from emostore.extract.encoders.text import text_encoder
from emostore.extract.runner import run_extraction
from emostore.heads import checkpoint
from emostore.heads.data import load_data
from emostore.heads.evaluate import evaluate
from emostore.heads.train import TrainConfig, fit, predict_rows
from emostore.store import Store


@pytest.fixture(scope="module")
def data(sample_store):
    return load_data(sample_store, ["text/minilm"], "emotion")


@pytest.mark.parametrize("head", ["mlp", "context", "knn"])
def test_round_trip_predicts_the_same(data, sample_store, tmp_path, monkeypatch, head: str) -> None:
    result = fit(data, head, {"causal": "true"} if head == "context" else None,
                 TrainConfig(epochs=3, patience=5, device="cpu"))
    path = checkpoint.save(result, data, tmp_path / "ckpt", store=sample_store)
    assert sorted(p.name for p in path.iterdir()) == ["checkpoint.json", "model.safetensors"]

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a checkpoint must load without unpickling")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    loaded = checkpoint.load(path, sample_store)
    rows = data.rows("test")
    assert torch.equal(predict_rows(result.model, data, rows), predict_rows(loaded.model, data, rows))
    meta = json.loads((path / "checkpoint.json").read_text())
    fs = sample_store.feature_set("text/minilm")
    assert meta["head"] == head and meta["feature_sets"][0]["config_hash"] == fs.config_hash
    assert meta["target"]["labels"] == data.target.labels and len(meta["target"]["labels"]) == 7
    assert len(meta["normalisation"]["text/minilm"]["mean"]) == fs.dim == 384
    if head == "context":
        assert meta["params"]["causal"] is True and loaded.model.params.causal is True


def test_refuses_a_store_with_other_features(data, sample_store, tmp_path) -> None:
    result = fit(data, "linear", config=TrainConfig(epochs=2, device="cpu"))
    path = checkpoint.save(result, data, tmp_path / "ckpt", store=sample_store)
    other = tmp_path / "other"
    shutil.copytree(sample_store.path, other)
    store = Store.open(other)
    run_extraction(store, text_encoder("minilm", device="cpu", max_length=32), overwrite=True, progress=False)
    new_hash = store.feature_set("text/minilm").config_hash
    assert new_hash != data.config_hashes[0]
    with pytest.raises(UserError, match=f"text/minilm.*{data.config_hashes[0]}.*{new_hash}"):
        evaluate(path, other)
    empty = Store.create(tmp_path / "empty", sample_store.table, dataset="sample")
    with pytest.raises(UserError, match="no feature set 'text/minilm'"):
        evaluate(path, empty)
    with pytest.raises(UserError, match="already exists"):
        checkpoint.save(result, data, path)
    with pytest.raises(UserError, match="not an emostore checkpoint"):
        checkpoint.load(tmp_path)
