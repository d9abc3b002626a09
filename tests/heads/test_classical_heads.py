"""The scikit-learn heads (``svm``, ``logreg``) on the sample's text and eGeMAPS features (speech for
42 rows, masked elsewhere): bit-exact safetensors checkpoints loaded without unpickling, the same
decisions as scikit-learn, masks, C chosen inside the training rows, the CLI, sweep and predict."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC
from typer.testing import CliRunner

from emostore.cli import app
from emostore.heads import checkpoint
from emostore.heads.base import fuse
from emostore.heads.classical import cv_splits
from emostore.heads.data import load_data
from emostore.heads.train import TrainConfig, fit, predict_rows

FEATURES = ["text/minilm", "audio/egemaps"]
CASES = {"svm-linear": ("svm", {"kernel": "linear", "C": 0.05}, ("coef",)),
         "svm-rbf": ("svm", {"kernel": "rbf", "C": 3.0}, ("support_vectors", "dual_coef")),
         "logreg": ("logreg", {"C": 0.5}, ("coef",))}
runner = CliRunner()


@pytest.fixture(scope="module")
def data(audio_sample_store):
    return load_data(audio_sample_store, FEATURES, "emotion")


def no_unpickling(*args, **kwargs):
    raise AssertionError("a checkpoint must load without unpickling")


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_is_bit_exact_without_pickle(audio_sample_store, data, tmp_path, monkeypatch, case):
    head, params, arrays = CASES[case]
    result = fit(data, head, params, TrainConfig(device="cpu"))
    path = checkpoint.save(result, data, tmp_path / case, store=audio_sample_store)
    assert sorted(p.name for p in path.iterdir()) == ["checkpoint.json", "model.safetensors"]
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(torch, "load", no_unpickling)
    loaded = checkpoint.load(path, audio_sample_store)
    saved = load_file(str(path / "model.safetensors"))
    for key in arrays + ("intercept",):
        assert saved[key].dtype == torch.float64 and saved[key].numel() > 0
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key
    rows = np.arange(len(data))
    assert torch.equal(predict_rows(result.model, data, rows), predict_rows(loaded.model, data, rows))


@pytest.mark.parametrize("case", list(CASES))
def test_same_decisions_as_scikit_learn(data, case):
    head, params, _ = CASES[case]
    model = fit(data, head, params, TrainConfig(device="cpu")).model
    train, test = data.rows("train"), data.rows("test")
    X = fuse(data.xs, data.mask).double().numpy()
    y = data.y.numpy()
    if head == "svm":
        ref = SVC(C=params["C"], kernel=params["kernel"]).fit(X[train], y[train])
        expected = ref.decision_function(X[test])
        got = predict_rows(model, data, test).double().numpy()[:, ref.classes_]
    else:
        ref = LogisticRegression(C=params["C"], max_iter=5000).fit(X[train], y[train])
        expected = ref.predict_proba(X[test])
        got = torch.softmax(predict_rows(model, data, test).double(), 1).numpy()[:, ref.classes_]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert (predict_rows(model, data, test).argmax(1).numpy() == ref.classes_[expected.argmax(1)]).mean() > 0.95


@pytest.mark.parametrize("case", ["svm-rbf", "logreg"])
def test_garbage_in_masked_rows_changes_no_prediction(data, case):
    head, params, _ = CASES[case]
    model = fit(data, head, params, TrainConfig(device="cpu")).model
    rows = np.arange(len(data))
    before = predict_rows(model, data, rows)
    missing = ~data.mask[:, 1]
    clean = data.xs[1].clone()
    try:
        data.xs[1][missing] = torch.randn(int(missing.sum()), data.dims[1]) * 1e3
        data.xs[1][torch.nonzero(missing).flatten()[::5]] = torch.nan
        assert torch.equal(before, predict_rows(model, data, rows))
        # the positive control: where the second feature set is present, the head reads it (each row with
        # speech given another such row's eGeMAPS changes that row's scores, and no other row's)
        present = torch.nonzero(data.mask[:, 1]).flatten()
        data.xs[1][present] = clean[present.roll(1)]
        changed = (predict_rows(model, data, rows) - before).abs().amax(1)
        assert (changed[present] > 0).all() and changed[present].median() > 0.1 and not changed[missing].any()
    finally:
        data.xs[1].copy_(clean)


def test_C_is_chosen_inside_the_training_speakers(audio_sample_store, data, tmp_path):
    speakers = np.array(["a", "b", "c", "a", "b", "c", "a", "b", "c", "d"])
    folds = cv_splits(np.arange(10) % 2, list(speakers), regression=False)
    assert len(folds) == 4 and all(len(set(speakers[test])) == 1 for _, test in folds)
    assert all(not set(speakers[train]) & set(speakers[test]) for train, test in folds)
    assert len(cv_splits(np.arange(10) % 2, [""] * 10, regression=False)) == 5  # unknown speakers: 5 folds

    result = fit(data, "svm", {"C_grid": "0.001;0.01;0.1;1"}, TrainConfig(device="cpu"))
    assert result.params.C in (0.001, 0.01, 0.1, 1.0)
    path = checkpoint.save(result, data, tmp_path / "ck", store=audio_sample_store)
    assert json.loads((path / "checkpoint.json").read_text())["params"]["C"] == result.params.C


def test_cli_speaker_norm_class_weights_sweep_and_predict(audio_sample_store, tmp_path):
    from emostore.serve.predictor import Predictor

    store = str(audio_sample_store.path)
    out = tmp_path / "svm"
    r = runner.invoke(app, ["train", store, "-f", ",".join(FEATURES), "--head", "svm", "-p", "kernel=rbf",
                            "-p", "C=2", "--class-weights", "--speaker-norm", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["params"]["kernel"] == "rbf"
    assert json.loads((out / "checkpoint.json").read_text())["speaker_norm"] is True
    r = runner.invoke(app, ["evaluate", str(out), "--store", store, "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["n"] == 66

    r = runner.invoke(app, ["sweep", store, "--heads", "svm,logreg", "-f", "text/minilm", "--seeds", "1",
                            "-p", "svm.C=0.01,1", "--json"])
    assert r.exit_code == 0, r.output
    sweep = json.loads(r.output)
    assert sorted(json.dumps(s["setting"]) for s in sweep["summary"]) == ['{"svm.C": "0.01"}', '{"svm.C": "1"}',
                                                                          "{}"]
    assert not sweep["failures"]

    out = tmp_path / "logreg"
    r = runner.invoke(app, ["train", store, "-f", "text/minilm", "--head", "logreg", "--out", str(out)])
    assert r.exit_code == 0, r.output
    pred = Predictor(out, device="cpu")
    table = audio_sample_store.table
    row = int(np.flatnonzero(table["id"] == "d052_u01")[0])
    got = pred.predict(text=table["text"].iat[row])
    data = load_data(audio_sample_store, ["text/minilm"], "emotion")
    ref = torch.softmax(predict_rows(pred.model, data, np.array([row]))[0], 0).numpy()
    assert got["label"] == data.target.labels[int(ref.argmax())]
    assert abs(max(got["probabilities"].values()) - float(ref.max())) < 1e-3


def test_rbf_svm_too_big_for_memory_is_refused(audio_sample_store, tmp_path):
    store = str(audio_sample_store.path)
    r = runner.invoke(app, ["train", store, "-f", "text/minilm", "--head", "svm", "-p", "kernel=rbf",
                            "-p", "memory_gb=0.0001", "--out", str(tmp_path / "c")])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert "268 training rows needs a 268 x 268 kernel matrix" in r.output
    assert "use -p kernel=linear or --head logreg" in r.output and not (tmp_path / "c").exists()
    r = runner.invoke(app, ["sweep", store, "--heads", "svm,logreg", "-f", "text/minilm", "--seeds", "1",
                            "-p", "svm.kernel=rbf", "-p", "svm.memory_gb=0.0001", "--json"])
    assert r.exit_code == 0, r.output
    sweep = json.loads(r.output)
    assert [f["head"] for f in sweep["failures"]] == ["svm"] and "kernel matrix" in sweep["failures"][0]["error"]
    assert [run["head"] for run in sweep["runs"]] == ["logreg"]
    r = runner.invoke(app, ["train", store, "-f", "text/minilm", "--head", "logreg", "--target", "sentiment",
                            "-p", "C_grid=abc", "--out", str(tmp_path / "d")])
    assert r.exit_code == 1 and "C_grid: cannot read 'abc'" in r.output
