"""``emostore train``, ``evaluate`` and ``sweep`` end to end on the sample store and on CMU-MOSI."""

from __future__ import annotations

import json

import heads_stores
import pytest
from typer.testing import CliRunner

from emostore.cli import app

runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def check_predictions_csv(path, store, metrics) -> None:
    """id, text, true, predicted and one probability per class, summing to 1, the predicted one the largest."""
    import numpy as np
    import pandas as pd

    p = pd.read_csv(path, keep_default_na=False)
    labels = sorted(metrics["per_class"])
    assert list(p.columns) == ["id", "text", "true", "predicted", *[f"p_{c}" for c in labels]]
    assert len(p) == metrics["n"]
    table = store.table.set_index("id")
    assert list(p["text"]) == [table.at[i, "text"] for i in p["id"]]
    assert list(p["true"]) == [table.at[i, "emotion"] for i in p["id"]]
    probs = p[[f"p_{c}" for c in labels]].to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    assert list(p["predicted"]) == [labels[j] for j in probs.argmax(1)]
    assert (p["true"] == p["predicted"]).mean() == pytest.approx(metrics["accuracy"])


def test_predictions_of_scores_hold_the_text_and_the_prediction() -> None:
    import numpy as np

    from emostore.heads.evaluate import Evaluation, predictions_table

    ev = Evaluation({"task": "regression"}, np.array(["a", "b"]), np.array([0.5, -1.0]), np.array([0.25, -0.5]),
                    texts=["Fine.", ""])
    assert predictions_table(ev).to_dict("list") == {"id": ["a", "b"], "text": ["Fine.", ""], "true": [0.5, -1.0],
                                                     "predicted": [0.25, -0.5]}


def test_train_then_evaluate_with_report(sample_store, tmp_path) -> None:
    ckpt, report = tmp_path / "ckpt", tmp_path / "report"
    r = run("train", sample_store.path, "--features", "text", "--head", "gated", "--out", ckpt,
            "--epochs", "5", "--device", "cpu", "--param", "hidden=64", "--json")
    assert r.exit_code == 0, r.output
    trained = json.loads(r.output)
    assert trained["head"] == "gated" and trained["params"]["hidden"] == 64 and trained["metric"] == "dev_weighted_f1"
    assert trained["checkpoint"] == str(ckpt) and 1 <= trained["best_epoch"] <= 5

    r = run("evaluate", ckpt, "--store", sample_store.path, "--split", "test", "--report", report, "--json")
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    assert {"accuracy", "weighted_f1", "macro_f1", "per_class", "confusion_matrix"} <= set(m)
    assert m["n"] == 66 and sum(map(sum, m["confusion_matrix"])) == 66
    assert set(m["per_class"]) == {"anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"}
    assert sum(c["support"] for c in m["per_class"].values()) == 66
    for name in ("metrics.json", "predictions.csv", "summary.md"):
        assert (report / name).stat().st_size > 0
    for name in ("confusion_counts.png", "confusion_normalised.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((report / "metrics.json").read_text())["weighted_f1"] == m["weighted_f1"]
    assert "| neutral |" in (report / "summary.md").read_text()
    check_predictions_csv(report / "predictions.csv", sample_store, m)

    r = run("evaluate", ckpt, "--store", sample_store.path)
    assert r.exit_code == 0 and "weighted F1" in r.output and "true (rows)" in r.output


def test_train_refusals_are_one_line(sample_store, tmp_path) -> None:
    r = runner.invoke(app, ["train", str(sample_store.path), "--features", "text", "--head", "knn",
                            "--out", str(tmp_path / "c"), "--param", "depth=3"])
    assert r.exit_code == 1 and "has no parameter 'depth'" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["train", str(sample_store.path), "--features", "audio", "--out", str(tmp_path / "c")])
    assert r.exit_code == 1 and "no feature set 'audio'" in r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path), "--store", str(sample_store.path)])
    assert r.exit_code == 1 and "not an emostore checkpoint" in r.output


def test_sweep_json(sample_store) -> None:
    r = run("sweep", sample_store.path, "--heads", "linear,knn", "--features", "text/minilm", "--seeds", "2",
            "--epochs", "3", "--param", "knn.k=5,10", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert len(out["runs"]) == 2 + 4   # linear x 2 seeds, knn x 2 values of k x 2 seeds
    rows = {(s["head"], json.dumps(s["setting"])): s for s in out["summary"]}
    assert set(rows) == {("linear", "{}"), ("knn", '{"knn.k": "5"}'), ("knn", '{"knn.k": "10"}')}
    for s in out["summary"]:
        assert s["seeds"] == 2 and 0 <= s["weighted_f1"]["mean"] <= 1 and s["weighted_f1"]["std"] >= 0
    knn = [r for r in out["runs"] if r["head"] == "knn"]
    assert sorted(r["params"]["k"] for r in knn) == [5, 5, 10, 10]


def test_regression_from_the_cli(tmp_path_factory, minilm_encoder, tmp_path) -> None:
    store = heads_stores.mosi_store(tmp_path_factory, minilm_encoder)
    ckpt = tmp_path / "ckpt"
    r = run("train", store.path, "--features", "text/minilm", "--head", "mlp", "--target", "sentiment",
            "--out", ckpt, "--epochs", "8", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["metric"] == "dev_mae"
    r = run("evaluate", ckpt, "--store", store.path, "--json", "--report", tmp_path / "report")
    m = json.loads(r.output)
    assert {"mae", "corr", "acc2", "acc7", "f1"} <= set(m) and m["n"] == 686
    assert m["mae"] < 1.4 and m["corr"] > 0.3
    assert (tmp_path / "report" / "scatter.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("target", ["emotion", "sentiment"])
def test_sample_targets(sample_store, tmp_path, target: str) -> None:
    """The sample has sentiment labels but no scores: sentiment is then a 3-class target."""
    r = run("train", sample_store.path, "-f", "text", "--head", "linear", "--target", target,
            "--out", tmp_path / "c", "--epochs", "2", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "c" / "checkpoint.json").read_text())
    expected = 7 if target == "emotion" else 3
    assert len(meta["target"]["labels"]) == expected


@pytest.fixture(scope="module")
def ctx_store(tmp_path_factory, minilm_encoder):
    """The sample with text/minilm and text/minilm-ctx2 (two feature sets that share a prefix)."""
    from conftest import SAMPLE

    from emostore.extract.encoders.text import text_encoder
    from emostore.extract.runner import run_extraction
    from emostore.ingest.run import ingest

    store, _ = ingest("csv", [SAMPLE], tmp_path_factory.mktemp("ctx") / "store", dataset="sample")
    run_extraction(store, minilm_encoder, progress=False)
    run_extraction(store, text_encoder("minilm", device="cpu", context=2), progress=False)
    return store


def test_sweep_scores_on_dev_unless_test_is_asked_for(sample_store) -> None:
    base = ["sweep", str(sample_store.path), "--heads", "linear", "-f", "text/minilm", "--seeds", "1",
            "--epochs", "2", "--device", "cpu", "--json", "--quiet"]
    r = runner.invoke(app, base)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["split"] == "dev" and "note" not in r.stderr
    r = runner.invoke(app, [*base, "--split", "validation"])
    assert r.exit_code == 0 and json.loads(r.stdout)["split"] == "dev"
    r = runner.invoke(app, [*base, "--split", "test"])
    assert r.exit_code == 0 and json.loads(r.stdout)["split"] == "test"
    assert "note: scoring on the test split" in r.stderr and "note" not in r.stdout


def test_sweep_table_keeps_feature_set_names_whole_at_80_columns(ctx_store, monkeypatch) -> None:
    from emostore import display

    monkeypatch.setattr(display.console, "width", 80)
    r = runner.invoke(app, ["sweep", str(ctx_store.path), "--heads", "linear", "-f", "text/minilm",
                            "-f", "text/minilm,text/minilm-ctx2", "--seeds", "1", "--epochs", "2",
                            "--device", "cpu", "--quiet"], terminal_width=80)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert max(map(len, lines)) <= 80, r.stdout
    cells = [line.split() for line in lines]
    assert sum("text/minilm-ctx2" in c for c in cells) == 1  # the second combination, its name whole
    assert sum("text/minilm" in c for c in cells) == 2  # in both combinations
    assert "…" not in r.stdout
    header = next(c for c in cells if "head" in c)
    assert header[-1] == "seconds"  # the last column is not cut off either
    runs = [c for c in cells if c and c[0] == "linear"]
    assert len(runs) == 2 and all(float(c[-1]) >= 0 for c in runs)


def test_heads_fitted_in_one_go_say_what_they_settled_on(sample_store, tmp_path) -> None:
    r = run("train", sample_store.path, "-f", "text/minilm", "--head", "svm", "-p", "C_grid=0.01;0.1;1",
            "--out", tmp_path / "svm")
    assert r.exit_code == 0, r.output
    assert "epoch" not in r.output
    chosen = json.loads((tmp_path / "svm" / "checkpoint.json").read_text())["params"]["C"]
    assert "svm fitted on cpu" in r.output and f"fitted with kernel=linear, C={chosen:g};" in r.output
    assert f"note: svm: C={chosen:g} chosen from 0.01, 0.1, 1 by leave-one-speaker-out" in r.output
    r = run("train", sample_store.path, "-f", "text/minilm", "--head", "knn", "-p", "k=5", "--out", tmp_path / "knn",
            "--json")
    summary = json.loads(r.stdout)
    assert summary["fitted_with"] == "k=5 neighbours of 268 training rows, temperature 0.1"
    r = run("train", sample_store.path, "-f", "text/minilm", "--head", "knn", "-p", "k=5", "--out", tmp_path / "knn2")
    assert "knn fitted on cpu" in r.output and "fitted with k=5 neighbours" in r.output and "epoch" not in r.output
