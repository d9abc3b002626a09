"""A fine-tuned model in the store: the bundled MiniLM fine-tuned on the sample, its reloads, its
feature set, heads, predict and serve on it (context turns included), cross-fitting, staleness."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import SAMPLE
from tiny_models import build
from typer.testing import CliRunner

from emostore.cli import app
from emostore.errors import UserError
from emostore.ingest.run import ingest
from emostore.store import Store

runner = CliRunner()
FAST = ("--device", "cpu", "--threads", "1", "--quiet")


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory):
    """The bundled MiniLM fine-tuned on the sample for 2 epochs, its vectors extracted (--extract)."""
    root = tmp_path_factory.mktemp("minilm")
    store, _ = ingest("csv", [SAMPLE], root / "store", dataset="sample")
    out = root / "sample-minilm"
    r = run("finetune", "text", store.path, "--out", out, "--epochs", "2", "--batch-size", "16", "--lr", "1e-4",
            "--max-length", "48", "--extract", *FAST, "--json")
    assert r.exit_code == 0, r.output
    return Store.open(store.path), out, json.loads(r.stdout)


def test_training_loss_falls_and_the_folder_reloads_everywhere(minilm_run):
    store, out, meta = minilm_run
    losses = [h["train_loss"] for h in meta["history"]]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert not list(out.rglob("*.pkl")) and not list(out.rglob("*.bin"))  # nothing pickled
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    assert type(AutoModel.from_pretrained(str(out))).__name__ == "BertModel"
    st = SentenceTransformer(str(out), device="cpu")
    # without context turns, the stored vector is the sentence-transformers embedding of "Speaker: text"
    t = store.table
    rows = [0, 5, 200]
    texts = [f"{t['speaker'].iat[r]}: {t['text'].iat[r]}" for r in rows]
    fs = store.feature_set("text/sample-minilm")
    _, X, _ = fs.read(np.array(rows))
    expected = st.encode(texts, convert_to_numpy=True)
    from emostore.core.runtime import resolve_precision

    assert fs.config["precision"] == resolve_precision("auto", "cpu")  # bfloat16 on CPUs with AMX / AVX-512 BF16
    if fs.config["precision"] == "float32":
        np.testing.assert_allclose(X, expected, atol=2e-5)
    else:  # bfloat16 weights: about 3 significant digits, the same direction
        cos = (X * expected).sum(1) / np.linalg.norm(X, axis=1) / np.linalg.norm(expected, axis=1)
        assert cos.min() > 0.999 and np.abs(X - expected).max() < 0.05, (cos, np.abs(X - expected).max())


def test_extract_fills_a_complete_feature_set_with_the_model_hash(minilm_run):
    store, out, meta = minilm_run
    (report,) = meta["extracted"]
    assert report == {"feature_set": "text/sample-minilm", "config_hash": report["config_hash"], "rows_run": 385,
                      "rows_failed": 0, "complete": True}
    fs = store.feature_set("text/sample-minilm")
    assert fs.is_complete() and fs.mask().all() and fs.dim == 384
    cfg = fs.config
    assert cfg["encoder"] == "finetuned" and cfg["model"] == str(out.resolve())
    assert cfg["model_hash"] == meta["model_hash"] and len(cfg["model_hash"]) == 16
    assert (cfg["input_format"], cfg["past"], cfg["future"], cfg["speaker"], cfg["pooling"]) == \
        ("utterance-first-v1", 0, 0, True, "utterance-mean")
    # `extract text --model DIR` recognises the folder and finds the same feature set done
    r = run("extract", "text", store.path, "--model", out, "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["encoder"] == "finetuned" and rep["feature_set"] == "text/sample-minilm" and rep["chunks_run"] == 0
    assert rep["config_hash"] == fs.config_hash


def test_context_head_trains_and_predict_answers_a_new_utterance(minilm_run, tmp_path):
    store, out, _ = minilm_run
    ck = tmp_path / "ctx"
    r = run("train", store.path, "--features", "text/sample-minilm", "--head", "context", "--out", ck,
            "--epochs", "3", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    r = run("predict", ck, "--text", "I can't believe you did that to me!", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    pred = json.loads(r.stdout)
    assert pred["label"] in json.loads((out / "finetune.json").read_text())["labels"]
    assert sum(pred["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert pred["modalities"] == {"text/sample-minilm": {"present": True}}


# ----- conversations: a live turn is encoded like a stored one --------------------------------
@pytest.fixture(scope="module")
def context_model(tmp_path_factory):
    """A tiny BERT fine-tuned with two past turns in its input, its vectors in the store."""
    root = tmp_path_factory.mktemp("ctx")
    store, _ = ingest("csv", [SAMPLE], root / "store", dataset="sample")
    model = build("bert", root / "tiny-bert")
    out = root / "ctx-bert"
    r = run("finetune", "text", store.path, "--out", out, "--model", model, "--past", "2", "--epochs", "1",
            "--lr", "1e-3", "--max-length", "96", "--extract", *FAST)
    assert r.exit_code == 0, r.output
    return Store.open(store.path), out


def test_predictor_turns_see_the_conversation_like_stored_rows(context_model, tmp_path):
    from fastapi.testclient import TestClient

    from emostore.heads import checkpoint as ckpt_io
    from emostore.heads.data import load_data
    from emostore.heads.train import TrainConfig, fit
    from emostore.serve.app import create_app
    from emostore.serve.predictor import Conversation, Predictor

    store, _ = context_model
    data = load_data(store, ["text/ctx-bert"], "emotion")
    path = ckpt_io.save(fit(data, "mlp", None, TrainConfig(epochs=2, device="cpu")), data, tmp_path / "ck",
                        store=store)
    pred = Predictor(path, device="cpu")
    t = store.table
    rows = np.flatnonzero(t["dialogue"] == "d041")
    _, X, _ = store.feature_set("text/ctx-bert").read(rows)
    conv = Conversation()
    direct = []
    for k, r in enumerate(rows):
        direct.append(pred.add_turn(conv, max_turns=50, text=t["text"].iat[r], speaker=t["speaker"].iat[r]))
        # each live turn is encoded with the turns before it, exactly as its stored row was
        np.testing.assert_allclose(conv.turns[-1].raw["text/ctx-bert"], X[k], atol=1e-5)
    alone = pred.encode(text=t["text"].iat[rows[-1]], speaker=t["speaker"].iat[rows[-1]]).raw["text/ctx-bert"]
    assert not np.allclose(alone, X[-1], atol=1e-3)  # without its past turns it is another input
    # the HTTP conversation endpoint goes through the same path
    # (through the server's batcher, which encodes turns of several conversations together)
    alone_probs = [pred.predict(text=t["text"].iat[r], speaker=t["speaker"].iat[r])["probabilities"] for r in rows]
    assert any(a != d["probabilities"] for a, d in zip(alone_probs, direct))
    client = TestClient(create_app(pred))
    for k, r in enumerate(rows):
        resp = client.post("/conversations/c1/turns", json={"text": t["text"].iat[r], "speaker": t["speaker"].iat[r]})
        assert resp.status_code == 200, resp.text
        got, want = resp.json()["probabilities"], direct[k]["probabilities"]
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[c] for c in want], list(want.values()), atol=2e-4)
    last = client.post("/conversations/c1/turns", json={"text": "Fine.", "speaker": "Ann"}).json()
    assert last["turn"] == len(rows) and last["label"] in data.target.labels


def test_cross_fitting_gives_train_rows_the_fold_model_that_did_not_see_them(tmp_path):
    import torch

    from emostore.extract.dialogue_input import DialogueFormat, TurnTokenizer, dialogue_turns, embed
    from emostore.extract.finetuned import load_transformer

    store, _ = ingest("csv", [SAMPLE], tmp_path / "store", dataset="sample")
    model = build("distilbert", tmp_path / "tiny")
    out = tmp_path / "xfit"
    args = ["finetune", "text", store.path, "--out", out, "--model", model, "--past", "1", "--epochs", "1",
            "--lr", "1e-3", "--max-length", "64", "--extract", "--name", "ft", "--device", "cpu", "--threads", "1",
            "--precision", "float32"]  # training and the extracted vectors (compared with a float32 forward pass)
    r = run(*args, "--quiet")
    assert r.exit_code == 0, r.output
    weights = (out / "model.safetensors").read_bytes()
    # the same run with --folds keeps the model and adds the fold models
    r = run(*args, "--folds", "3", "--json")
    assert r.exit_code == 0, r.output
    assert "holds this model without cross-fitting models: adding 3" in r.stderr
    assert (out / "model.safetensors").read_bytes() == weights
    meta = json.loads(r.stdout)
    cf = meta["cross_fit"]
    assert cf["folds"] == 3 and len(cf["models"]) == 3 and sorted(set(cf["fold_of"].values())) == [0, 1, 2]
    assert [e["feature_set"] for e in meta["extracted"]] == ["text/ft", "text/ft-xfit3"]
    assert [e["rows_run"] for e in meta["extracted"]] == [0, 385]  # text/ft was already there
    st = Store.open(store.path)
    t = st.table
    # folds are whole dialogues of the train split
    train_ids = set(t.loc[t["split"] == "train", "id"])
    assert set(cf["fold_of"]) == train_ids
    by_dialogue = t[t["split"] == "train"].groupby("dialogue")["id"].apply(lambda s: {cf["fold_of"][i] for i in s})
    assert by_dialogue.map(len).eq(1).all()
    _, full, _ = st.feature_set("text/ft").read()
    _, xfit, _ = st.feature_set("text/ft-xfit3").read()
    split = t["split"].to_numpy()
    # dev/test rows: the full model (batched with other rows, hence rounding differences only)
    np.testing.assert_allclose(full[split != "train"], xfit[split != "train"], atol=1e-5)
    # each train row: the vector of the fold model that was not trained on it
    tok, backbone, _ = load_transformer(str(out / "folds" / "1"))
    rows = np.array([r for r in np.flatnonzero(split == "train") if cf["fold_of"][t["id"].iat[r]] == 1][:5])
    tt = TurnTokenizer(tok, 64)
    batch = tt.collate(tt.encode(dialogue_turns(t, rows, DialogueFormat(past=1))))
    with torch.inference_mode():
        expected = embed(backbone.eval(), batch).numpy()
    np.testing.assert_allclose(xfit[rows], expected, atol=1e-5)
    assert not np.allclose(xfit[rows], full[rows], atol=1e-4)
    assert meta["cross_fit"]["models"][1]["held_out_rows"] == sum(v == 1 for v in cf["fold_of"].values())


def test_a_retrained_model_is_another_configuration(context_model, tmp_path):
    from emostore.serve.predictor import Predictor

    _, trained = context_model
    model = tmp_path / "model"
    shutil.copytree(trained, model)
    store, _ = ingest("csv", [SAMPLE], tmp_path / "store", dataset="sample")
    assert run("extract", "text", store.path, "--model", model, "--device", "cpu", "--quiet").exit_code == 0
    ck = tmp_path / "ck"
    assert run("train", store.path, "--features", "text/model", "--out", ck, "--epochs", "2",
               "--device", "cpu").exit_code == 0
    old_hash = Store.open(store.path).feature_set("text/model").config["model_hash"]
    args = json.loads((model / "finetune.json").read_text())["spec"]
    r = run("finetune", "text", store.path, "--out", model, "--overwrite", "--model", args["base_model"],
            "--past", "2", "--epochs", "1", "--lr", "1e-3", "--max-length", "96", "--seed", "5", *FAST)
    assert r.exit_code == 0, r.output
    new_hash = json.loads((model / "finetune.json").read_text())["model_hash"]
    assert new_hash != old_hash
    # the feature set made with the old model is now another configuration
    r = run("extract", "text", store.path, "--model", model, "--device", "cpu")
    assert r.exit_code == 1 and "another configuration" in r.stderr and new_hash in r.stderr
    # and what was trained on it no longer rebuilds its encoder
    with pytest.raises(UserError, match="changed since this feature set's configuration was recorded"):
        Predictor(ck, device="cpu").predict(text="Hello again.")



def test_search_encodes_a_text_query_with_the_fine_tuned_model(minilm_run):
    store, _, _ = minilm_run
    assert run("index", "build", store.path, "--features", "text/sample-minilm").exit_code == 0
    r = run("search", store.path, "Why would you do that to me?", "-k", "3", "--json")
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)["neighbours"]
    assert len(hits) == 3 and all(h["id"] in set(store.table["id"]) for h in hits)


def test_a_store_its_model_and_checkpoint_moved_together_still_predict(context_model, tmp_path):
    """The feature set records the model folder relative to the store, the checkpoint the store
    relative to itself: moved elsewhere (another machine), the three still predict, the same."""
    _, trained = context_model
    here = tmp_path / "here"
    store, _ = ingest("csv", [SAMPLE], here / "store", dataset="sample")
    shutil.copytree(trained, here / "models" / "ctx")
    assert run("extract", "text", store.path, "--model", here / "models" / "ctx", "--device", "cpu",
               "--quiet").exit_code == 0
    fs = Store.open(store.path).feature_set("text/ctx")
    assert fs.config["model_from_store"] == "../models/ctx"
    assert run("train", store.path, "--features", "text/ctx", "--out", here / "ckpt", "--epochs", "2",
               "--device", "cpu", "--quiet").exit_code == 0
    before = run("predict", here / "ckpt", "--text", "Fine.", "--json")
    assert before.exit_code == 0, before.output
    there = tmp_path / "there"
    here.rename(there)
    after = run("predict", there / "ckpt", "--text", "Fine.", "--json")
    assert after.exit_code == 0, after.output
    assert json.loads(after.stdout)["probabilities"] == json.loads(before.stdout)["probabilities"]
    # a model made with future turns: serve says that live turns have none
    from emostore.heads import checkpoint as ckpt_io

    meta = json.loads((there / "ckpt" / "checkpoint.json").read_text())
    meta["feature_sets"][0]["config"]["future"] = 1
    (there / "ckpt" / "checkpoint.json").write_text(json.dumps(meta))
    ckpt_io.load(there / "ckpt")
    import socket

    with socket.socket() as busy:  # a port in use: serve warns, then refuses in one line before loading models
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = run("serve", there / "ckpt", "--port", busy.getsockname()[1])
    assert r.exit_code == 1 and "live conversation turns have no future turns yet" in r.stderr, r.output
    assert r.stderr.strip().splitlines()[-1].startswith("error: cannot listen on 127.0.0.1:"), r.stderr


@pytest.mark.parametrize("change", ["not json", "no input", "negative past", "absolute fold path"])
def test_a_tampered_finetune_json_is_refused_in_one_line(context_model, tmp_path, change):
    from emostore.extract.finetuned import read_meta

    _, trained = context_model
    model = tmp_path / "model"
    shutil.copytree(trained, model)
    meta = json.loads((model / "finetune.json").read_text())
    if change == "not json":
        (model / "finetune.json").write_text("{ not json")
    else:
        if change == "no input":
            meta.pop("input")
        elif change == "negative past":
            meta["input"]["past"] = -1
        else:
            meta["cross_fit"] = {"folds": 2, "models": [{"path": "/etc"}]}
        (model / "finetune.json").write_text(json.dumps(meta))
    with pytest.raises(UserError) as err:
        read_meta(model)
    assert "\n" not in str(err.value) and "finetune.json" in str(err.value)
    store, _ = ingest("csv", [SAMPLE], tmp_path / "store", dataset="sample")
    r = run("extract", "text", store.path, "--model", model, "--device", "cpu", "--quiet")
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1, r.output
