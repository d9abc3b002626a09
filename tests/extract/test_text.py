"""Text extraction with the bundled MiniLM: values, masks, dedup, context, resume, config refusal."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE, rounding

from emostore.extract.encoders.text import build_inputs, bundled_model_path, text_encoder
from emostore.extract.runner import run_extraction
from emostore.ingest.base import finalize
from emostore.store import ConfigMismatch, Shard, Store


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def dialogue_table() -> pd.DataFrame:
    rows = [
        ("a0", "d1", 0, "Ann", "I got the job, I can't believe it!"),
        ("a1", "d1", 1, "Ben", "That's wonderful news, I'm so happy for you."),
        ("a2", "d1", 2, "Ann", "Okay."),
        ("a3", "d1", 3, "Ben", "   "),
        ("b0", "d2", 0, "Cat", "Okay."),
        ("b1", "d2", 1, "Dan", "The flight was cancelled and nobody told us."),
        ("b2", "d2", 2, "Cat", "This is absolutely infuriating."),
    ]
    df = pd.DataFrame(rows, columns=["id", "dialogue", "turn", "speaker", "text"])
    df = df.sample(frac=1.0, random_state=0)  # table order must not matter for context
    return finalize(df, "toy", [], "toy")


def test_bundled_model_embeds_meaning(minilm_encoder):
    v = minilm_encoder.encode_texts(["I am so happy today!", "What a joyful, delightful day.",
                                     "This is disgusting and I hate it."])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert cos(v[0], v[1]) > cos(v[0], v[2]) + 0.2
    assert minilm_encoder.stored_config["model"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_rows_masked_deduplicated_and_ordered(tmp_path, minilm_encoder, monkeypatch):
    table = dialogue_table()
    store = Store.create(tmp_path / "s", table, dataset="toy")
    calls: list[str] = []
    original = type(minilm_encoder)._encode_texts

    def spy(self, texts):
        calls.extend(texts)
        return original(self, texts)

    monkeypatch.setattr(type(minilm_encoder), "_encode_texts", spy)
    report = run_extraction(store, minilm_encoder, progress=False)
    assert report.complete and report.rows_failed == 1
    assert sorted(calls) == sorted(set(calls)) and calls.count("Okay.") == 1  # each distinct text once
    ids, X, mask = store.read("text/minilm")
    pos = {i: k for k, i in enumerate(ids)}
    assert not mask[pos["a3"]] and np.isnan(X[pos["a3"]]).all()
    assert "no text" in dict((i, r) for _, i, r in store.feature_set("text/minilm").errors())["a3"]
    np.testing.assert_array_equal(X[pos["a2"]], X[pos["b0"]])
    ref = minilm_encoder.encode_texts(["This is absolutely infuriating."])[0]
    # alone or in a padded batch: rounding differences only (bfloat16 keeps about 3 digits)
    np.testing.assert_allclose(X[pos["b2"]], ref, atol=rounding(minilm_encoder.precision))


def test_context_inputs_follow_dialogue_order():
    table = dialogue_table()
    rows = np.arange(len(table))
    inputs = dict(zip(table["id"], build_inputs(table, rows, context=2)))
    assert inputs["b2"] == ("Cat: Okay.\nDan: The flight was cancelled and nobody told us.\n"
                            "Cat: This is absolutely infuriating.")
    assert inputs["a0"] == "Ann: I got the job, I can't believe it!"
    assert inputs["a3"] is None  # no text of its own: masked, even with context
    assert inputs["a2"].startswith("Ann: I got the job") and inputs["a2"].endswith("Ann: Okay.")
    plain = dict(zip(table["id"], build_inputs(table, rows, context=0)))
    assert plain["b2"] == "This is absolutely infuriating."


def test_context_feature_set_is_its_own(tmp_path, minilm_encoder):
    store = Store.create(tmp_path / "s", dialogue_table(), dataset="toy")
    run_extraction(store, minilm_encoder, progress=False)
    ctx = text_encoder("minilm", device="cpu", context=2)
    assert ctx.name == "minilm-ctx2" and ctx.stored_config["context"] == 2
    run_extraction(store, ctx, progress=False)
    assert store.feature_sets() == ["text/minilm", "text/minilm-ctx2"]
    ids, X, _ = store.read("text/minilm")
    _, Xc, _ = store.read("text/minilm-ctx2")
    first = list(ids).index("a0")  # no previous turn: context input = "Ann: <text>", not the bare text
    assert not np.allclose(X[first], Xc[first])
    assert store.feature_set("text/minilm").config_hash != store.feature_set("text/minilm-ctx2").config_hash


def test_huggingface_mean_pooling_matches_sentence_transformers(minilm_encoder):
    """all-MiniLM-L6-v2 is mean pooling + L2 norm: the plain HF path must reproduce it."""
    hf = text_encoder(str(bundled_model_path()), backend="huggingface", device="cpu", precision="float32")
    st = text_encoder("minilm", device="cpu", precision="float32")  # the same arithmetic on both sides
    assert hf.kind == "huggingface" and hf.dim == 384 and hf.stored_config["pooling"] == "mean"
    texts = ["Why would you do that to me?", "Okay.", "We won the lottery, I can't breathe!"]
    a = hf.encode_texts(texts)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    np.testing.assert_allclose(a, st.encode_texts(texts), atol=1e-5)


def test_unknown_model_is_a_clear_error(tmp_path):
    from emostore.errors import UserError

    with pytest.raises(UserError, match="cannot load"):
        text_encoder(str(tmp_path / "no-such-model"), device="cpu")


def test_resume_and_shards_equal_uninterrupted(tmp_path, minilm_encoder):
    from conftest import SAMPLE

    from emostore.ingest.run import ingest

    full, _ = ingest("csv", [SAMPLE], tmp_path / "full", dataset="sample")
    run_extraction(full, minilm_encoder, chunk_rows=50, progress=False)
    part, _ = ingest("csv", [SAMPLE], tmp_path / "part", dataset="sample")
    r1 = run_extraction(part, minilm_encoder, chunk_rows=50, shard=Shard(1, 3), progress=False)
    assert not r1.complete and r1.chunks_run == 3
    r2 = run_extraction(part, minilm_encoder, progress=False)  # the rest, resumed
    assert r2.complete and r2.chunks_run == 5
    again = run_extraction(part, minilm_encoder, progress=False)
    assert again.chunks_run == 0  # nothing redone
    for a, b in zip(full.read("text/minilm"), part.read("text/minilm")):
        np.testing.assert_array_equal(a, b)


def test_other_configuration_refused(tmp_path, minilm_encoder):
    store = Store.create(tmp_path / "s", dialogue_table(), dataset="toy")
    run_extraction(store, minilm_encoder, progress=False)
    other = text_encoder("minilm", device="cpu", max_length=16, name="minilm")
    with pytest.raises(ConfigMismatch, match="another configuration"):
        run_extraction(store, other, progress=False)
    report = run_extraction(store, other, overwrite=True, progress=False)
    assert report.complete and store.feature_set("text/minilm").config["max_length"] == 16


def hub_out_of_reach(monkeypatch, cache: Path, *, offline: bool = False) -> None:
    """The Hugging Face hub cannot be reached (a closed port on loopback), or HF_HUB_OFFLINE is set;
    ``cache`` is the Hugging Face cache."""
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "ENDPOINT", "http://127.0.0.1:1")  # reachable() keeps its answer per endpoint
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))


def cached(cache: Path, repo: str) -> Path:
    """``repo`` in the Hugging Face cache's layout, holding the bundled MiniLM's files (linked)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    shutil.copytree(bundled_model_path(), folder / "snapshots" / ("0" * 40), copy_function=os.symlink)
    return folder / "snapshots" / ("0" * 40)


@pytest.mark.parametrize("offline", [False, True])
def test_a_hub_name_out_of_reach_fails_at_once_in_one_line(tmp_path, monkeypatch, offline):
    """`extract text` and `finetune text` with a model name that is not cached, the hub out of reach
    (or HF_HUB_OFFLINE set): one line saying why and how to pass a local folder; nothing written."""
    from typer.testing import CliRunner

    from emostore.cli import app
    from emostore.ingest.run import ingest

    store, _ = ingest("csv", [SAMPLE], tmp_path / "s", dataset="sample")
    hub_out_of_reach(monkeypatch, tmp_path / "cache", offline=offline)
    why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face hub (http://127.0.0.1:1) cannot be reached"
    runner = CliRunner()
    for args in (["extract", "text", str(store.path), "--model", "roberta"],
                 ["finetune", "text", str(store.path), "--model", "roberta", "--out", str(tmp_path / "ft")]):
        r = runner.invoke(app, args)
        assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1, r.output
        said = r.stderr
        assert f"'roberta' (roberta-base): it is not a local folder nor in the Hugging Face cache, and {why}" in said
        assert "--model ./models/roberta-base, made with `hf download roberta-base --local-dir" in said
    assert Store.open(store.path).feature_sets() == [] and not (tmp_path / "ft").exists()


def test_a_cached_hub_name_loads_while_the_hub_is_out_of_reach(tmp_path, monkeypatch, minilm_encoder):
    """A hub name in the Hugging Face cache loads from there, recorded under its hub name; a
    sentence-transformers short name finds its ``sentence-transformers/`` copy."""
    from emostore.extract.hub import local_or_hub

    hub_out_of_reach(monkeypatch, tmp_path / "cache")
    folder = cached(tmp_path / "cache", "acme/minilm-copy")
    cached(tmp_path / "cache", "sentence-transformers/minilm-short")
    assert local_or_hub("acme/minilm-copy", what="x") == str(folder)
    texts = ["Why would you do that to me?", "Okay."]
    hf = text_encoder("acme/minilm-copy", backend="huggingface", device="cpu", precision="float32")
    assert hf.stored_config["model"] == "acme/minilm-copy"
    st = text_encoder("minilm-short", device="cpu", precision="float32")
    assert st.stored_config["model"] == "minilm-short"
    np.testing.assert_allclose(st.encode_texts(texts), text_encoder("minilm", device="cpu", precision="float32")
                               .encode_texts(texts), atol=1e-6)


def test_an_encoder_sharing_the_model_keeps_the_model_default_token_limit(minilm_encoder):
    """Encoders share one loaded model and each sets its own token limit on it per call: one made
    after a short-limit encoder has run still defaults to the model's own limit (256 for MiniLM),
    so a long utterance is embedded whole, as by the first encoder."""
    from emostore.extract.encoders.text import text_encoder

    long_text = " ".join(["we drove all night to the coast and then the car broke down"] * 8)
    short = text_encoder("minilm", device="cpu", max_length=16)
    assert short.model is minilm_encoder.model  # shared, as in one process with two feature sets
    truncated = short.encode_texts([long_text])
    later = text_encoder("minilm", device="cpu")
    assert later.max_length == minilm_encoder.max_length == 256
    assert later.config.max_length == 256
    whole = later.encode_texts([long_text])
    np.testing.assert_allclose(whole, minilm_encoder.encode_texts([long_text]), atol=1e-5)
    assert float(np.abs(whole - truncated).max()) > 0.01  # the positive control: 16 tokens differ
