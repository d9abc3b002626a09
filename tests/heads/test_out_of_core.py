"""Heads that train out of core: the sample store in 32-row chunks, with a memory budget so small that
every feature vector streams from the store a window at a time. Every training row is seen once per
epoch, training lands in the accuracy band of in-memory training, the shuffle follows --seed, the
statistics and predictions equal the in-memory ones, and the classical heads fall back to the
streaming solver or refuse in one line."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import SAMPLE
from typer.testing import CliRunner

from emostore.cli import app
from emostore.errors import UserError
from emostore.extract.runner import run_extraction
from emostore.heads import checkpoint
from emostore.heads.data import load_data
from emostore.heads.memory import parse_size
from emostore.heads.stream import plan_windows
from emostore.heads.train import TrainConfig, fit, predict_rows
from emostore.ingest.run import ingest

TINY = "24k"  # 16 rows of 384-d vectors: every window is one 32-row chunk
FEATURES = "text/minilm"


@pytest.fixture(scope="module")
def store(tmp_path_factory, minilm_encoder):
    st, _ = ingest("csv", [SAMPLE], tmp_path_factory.mktemp("ooc") / "store", dataset="sample")
    run_extraction(st, minilm_encoder, chunk_rows=32, progress=False)
    return st


@pytest.fixture(scope="module")
def both(store):
    return load_data(store, FEATURES, memory_budget="1G"), load_data(store, FEATURES, memory_budget=TINY)


def test_streams_below_the_budget_with_the_same_statistics_and_predictions(both):
    memory, streamed = both
    assert not memory.streamed and streamed.streamed and streamed.xs == []
    assert streamed.reader.window_rows(streamed.budget) == 32  # one chunk per window
    for name in memory.norm:  # one streaming pass gives the in-memory statistics
        np.testing.assert_allclose(streamed.norm[name]["mean"], memory.norm[name]["mean"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(streamed.norm[name]["std"], memory.norm[name]["std"], rtol=1e-5)
    rows = np.flatnonzero(memory.split == "test")
    for head in ("mlp", "context"):  # a model predicts the same from streamed windows (whole dialogues)
        model = fit(memory, head, config=TrainConfig(epochs=2, seed=0)).model
        torch.testing.assert_close(predict_rows(model, streamed, rows), predict_rows(model, memory, rows),
                                   rtol=1e-4, atol=1e-4)


def mean_test_f1(data, head: str) -> tuple[float, list]:
    from emostore.heads.evaluate import evaluate_data

    scores, fits = [], []
    for seed in range(6):  # 66 test rows: one seed's weighted F1 moves by 0.1 or more
        fitted = fit(data, head, config=TrainConfig(epochs=30, patience=8, seed=seed))
        scores.append(evaluate_data(fitted.model, data, "test").metrics["weighted_f1"])
        fits.append(fitted)
    return float(np.mean(scores)), fits


@pytest.mark.parametrize("head", ["mlp", "context"])
def test_out_of_core_training_sees_every_row_and_reaches_the_in_memory_band(both, head):
    memory, streamed = both
    n_train = len(memory.rows("train"))
    f1_memory, _ = mean_test_f1(memory, head)
    f1_streamed, fits = mean_test_f1(streamed, head)
    for fitted in fits:
        assert [h["rows_seen"] for h in fitted.history] == [n_train] * fitted.epochs_run  # no row left out
        assert any("streamed from the store" in note for note in fitted.notes)
    assert f1_streamed > 0.35 and f1_memory > 0.35  # far above the majority class (weighted F1 0.15)
    assert abs(f1_streamed - f1_memory) < 0.12, (f1_streamed, f1_memory)


def test_the_shuffle_follows_the_seed(both):
    _, streamed = both
    runs = [fit(streamed, "mlp", config=TrainConfig(epochs=3, seed=seed)) for seed in (7, 7, 8)]
    losses = [[h["train_loss"] for h in r.history] for r in runs]
    assert losses[0] == losses[1] and losses[0] != losses[2]
    for key, value in runs[0].model.state_dict().items():
        assert torch.equal(value, runs[1].model.state_dict()[key]), key
    # the plan itself: chunks in an order drawn from the seed, every unit once
    units = streamed.rows("train")
    plans = [plan_windows(units, 32, 32, np.random.default_rng(s)) for s in (7, 7, 8)]
    orders = [np.concatenate(p) for p in plans]
    assert np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[0], orders[2])
    assert sorted(orders[2].tolist()) == list(range(len(units)))


def test_dialogue_windows_hold_whole_dialogues(both):
    _, streamed = both
    units = [d for d in streamed.dialogues if (streamed.split[d] == "train").any()]
    seen = []
    for window, local in streamed.windows(units, np.random.default_rng(0)):
        for d in local:
            rows = window.origin[d]
            seen.append(tuple(rows))
            assert torch.equal(window.speakers[torch.as_tensor(d)], streamed.speakers[torch.as_tensor(rows)])
    assert sorted(seen) == sorted(tuple(d) for d in units)  # each dialogue once, whole and in turn order


def test_classical_heads_stream_through_sgd(store, both, tmp_path):
    memory, streamed = both
    exact = fit(memory, "logreg", {"C": 0.5})
    sgd = fit(streamed, "logreg", {"C": 0.5})
    assert exact.params.solver == "exact" and sgd.params.solver == "sgd"
    assert sgd.history[0]["rows_seen"] == len(memory.rows("train")) and sgd.history[0]["passes"] == 5
    assert sgd.dev_score > 0.4 and abs(sgd.dev_score - exact.dev_score) < 0.15, (sgd.dev_score, exact.dev_score)
    path = checkpoint.save(sgd, streamed, tmp_path / "sgd", store=store)
    loaded = checkpoint.load(path, store)
    rows = np.arange(len(memory))
    assert loaded.meta["params"]["solver"] == "sgd"
    assert torch.equal(predict_rows(loaded.model, memory, rows), predict_rows(sgd.model, memory, rows))
    svm = fit(memory, "svm", {"solver": "sgd"})  # asked for: a linear SVM by SGD on the hinge loss
    assert svm.params.solver == "sgd" and svm.dev_score > 0.4


@pytest.mark.parametrize("head, params, message", [
    ("logreg", {"solver": "exact"}, "logreg -p solver=exact: 268 training rows x 385 features need about"),
    ("logreg", {"C_grid": "0.1;1"}, "-p C_grid cross-validates in memory; give -p C=VALUE instead"),
    ("svm", {"kernel": "rbf"}, "svm kernel=rbf: 268 training rows x 385 features"),
    ("knn", {}, "head 'knn' keeps every training row in memory (268 rows"),
])
def test_classical_heads_refuse_what_they_cannot_do_in_one_line(both, head, params, message):
    _, streamed = both
    with pytest.raises(UserError, match=re.escape(message)) as exc:
        fit(streamed, head, params)
    text = str(exc.value)
    assert "\n" not in text and ("--memory-budget" in text or "kernel=linear" in text)  # what to do instead


def test_train_and_evaluate_commands_stream(store, tmp_path):
    runner = CliRunner()
    ckpt = tmp_path / "mlp"
    r = runner.invoke(app, ["train", str(store.path), "-f", FEATURES, "--out", str(ckpt), "--epochs", "2",
                            "--memory-budget", TINY, "--device", "cpu", "--quiet"])
    assert r.exit_code == 0 and "note: features streamed from the store" in r.output, r.output
    streamed = runner.invoke(app, ["evaluate", str(ckpt), "--store", str(store.path), "--memory-budget", TINY,
                                   "--json"])
    loaded = runner.invoke(app, ["evaluate", str(ckpt), "--store", str(store.path), "--json"])
    assert streamed.exit_code == 0 and loaded.exit_code == 0
    assert streamed.stdout == loaded.stdout  # the same metrics, streamed or loaded
    r = runner.invoke(app, ["train", str(store.path), "-f", FEATURES, "--out", str(tmp_path / "x"),
                            "--memory-budget", "lots"])
    assert r.exit_code == 1 and "--memory-budget: cannot read 'lots'" in r.output
    assert parse_size("1.5G") == 3 * 2**29 and parse_size("64k") == 65536 and parse_size(1000) == 1000
