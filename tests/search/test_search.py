"""Nearest-emotion search on the sample store: exactness, filters, kinds, staleness, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import optional
from typer.testing import CliRunner

from emostore.cli import app
from emostore.errors import UserError
from emostore.search import NearestIndex, StaleIndex
from emostore.search.build import store_vectors
from emostore.search.index import normalise
from emostore.search.run import build_index, search
from emostore.store import Store

faiss = optional("faiss", "search")


@pytest.fixture()
def store(sample_store, tmp_path):
    """A private copy of the session's sample store (indexes and re-extraction change it)."""
    import shutil

    shutil.copytree(sample_store.path, tmp_path / "store")
    return Store.open(tmp_path / "store")


def test_flat_equals_brute_force_cosine(store):
    idx = build_index(store, ["text/minilm"])
    _, X, _ = store.read("text/minilm")
    Xn = normalise(X)
    q = Xn[[3, 100, 200]]
    sims, rows = idx.search(q, 10)
    brute = np.argsort(-(q @ Xn.T), axis=1)[:, :10]
    np.testing.assert_array_equal(rows, brute)
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)  # each query finds itself first


def test_id_query_excludes_itself_and_filters(store):
    build_index(store, ["text/minilm"])
    out = search(store, "d001_u01", k=5)
    ids = [h["id"] for h in out["neighbours"]]
    assert len(ids) == 5 and "d001_u01" not in ids
    sims = [h["similarity"] for h in out["neighbours"]]
    assert sims == sorted(sims, reverse=True)
    test = search(store, "d001_u01", k=5, split="test")
    assert {h["split"] for h in test["neighbours"]} == {"test"}
    anger = search(store, "I am furious with you", k=4, label="anger")
    assert {h["label"] for h in anger["neighbours"]} == {"anger"}
    assert anger["nearest_emotion"] == "anger"


def test_text_query_uses_the_store_encoder(store):
    build_index(store, ["text/minilm"])
    t = store.table
    text = t.loc[t["id"] == "d010_u02", "text"].item()
    out = search(store, text, k=3)
    assert out["query_kind"] == "text query"
    top = out["neighbours"][0]
    assert top["text"] == text and top["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert sum(v["count"] for v in out["labels"].values()) == 3
    assert out["nearest_emotion"] in out["labels"]


@pytest.mark.parametrize("kind,params", [("ivf", {"nlist": 8, "nprobe": 8}), ("hnsw", {"M": 16, "ef_search": 128}),
                                         ("ivf", {"nlist": 8, "nprobe": 8, "pq_m": 48})])
def test_ivf_and_hnsw_recall_against_flat(store, kind, params):
    rows, X, _ = store_vectors(store, ["text/minilm"])
    flat = NearestIndex.build(X, rows)
    approx = NearestIndex.build(X, rows, kind=kind, **params)
    _, exact = flat.search(X[:50], 10)
    _, found = approx.search(X[:50], 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, found)])
    assert recall >= (0.5 if params.get("pq_m") else 0.95)
    assert approx.meta["kind"] == kind and approx.meta["params"]["nlist" if kind == "ivf" else "M"]


def test_concatenated_features(store):
    idx = build_index(store, ["text/minilm", "text/minilm-ctx2"]) if store.has_feature_set("text/minilm-ctx2") else None
    if idx is None:
        from emostore.extract.encoders.text import text_encoder
        from emostore.extract.runner import run_extraction

        run_extraction(store, text_encoder("minilm", device="cpu", context=2), progress=False)
        idx = build_index(store, ["text/minilm", "text/minilm-ctx2"])
    assert idx.meta["dim"] == 768 and idx.name == "text-minilm+text-minilm-ctx2"
    out = search(store, "d020_u03", k=3, features=["text/minilm", "text/minilm-ctx2"])
    assert out["features"] == ["text/minilm", "text/minilm-ctx2"] and len(out["neighbours"]) == 3


def test_staleness_detected_and_rebuilt(store):
    from emostore.extract.encoders.text import text_encoder
    from emostore.extract.runner import run_extraction

    build_index(store, ["text/minilm"])
    run_extraction(store, text_encoder("minilm", device="cpu", max_length=8, name="minilm"), overwrite=True,
                   progress=False)
    with pytest.raises(StaleIndex, match="re-extracted with another configuration"):
        search(store, "d001_u01")
    out = search(store, "d001_u01", auto_rebuild=True)
    assert len(out["neighbours"]) == 10
    assert search(store, "d001_u01")["neighbours"] == out["neighbours"]  # fresh again


def test_staleness_when_valid_rows_change(store, minilm_encoder):
    fs = store.feature_set("text/minilm")
    n = fs.chunk_slice(0).stop
    _, X, _ = fs.read(fs.chunk_slice(0))
    ok = np.arange(n) >= 10  # as if the first ten rows had failed
    fs.write_chunk(0, X, ok, ["" if good else "failed" for good in ok])
    assert build_index(store, ["text/minilm"]).meta["n_vectors"] == 375
    from emostore.extract.runner import run_extraction

    run_extraction(store, minilm_encoder, overwrite=True, progress=False)
    idx = NearestIndex.load(store, "text-minilm")
    assert any("rows with valid features changed" in r for r in idx.stale_reasons(store))


def test_bad_input_is_a_clear_error(store, tmp_path):
    with pytest.raises(UserError, match="no search index"):
        search(store, "hello")
    build_index(store, ["text/minilm"])
    for query, message in [("", "empty query"), ("   ", "empty query"), ("d999_u99", "unknown utterance id"),
                           (str(tmp_path / "missing.wav"), "does not exist")]:
        with pytest.raises(UserError, match=message):
            search(store, query)
    (tmp_path / "notes.pdf").write_text("x")
    with pytest.raises(UserError, match="unsupported type"):
        search(store, str(tmp_path / "notes.pdf"))
    (tmp_path / "clip.wav").write_bytes(b"RIFF")
    with pytest.raises(UserError, match="a audio query|an audio query|audio query can only"):
        search(store, str(tmp_path / "clip.wav"))
    with pytest.raises(UserError, match="no feature set"):
        build_index(store, ["audio/egemaps"])
    import zarr

    pointer = zarr.open_group(str(store.path / "indexes" / "text-minilm"), mode="r").attrs["current"]
    blob = zarr.open_array(str(store.path / "indexes" / "text-minilm" / pointer / "faiss"), mode="r+")
    blob[:] = np.frombuffer((b"garbage" * blob.shape[0])[:blob.shape[0]], dtype=np.uint8)
    with pytest.raises(UserError, match="corrupt or unreadable"):
        search(store, "hello")


def test_cli_search_json_and_errors(store):
    runner = CliRunner()
    r = runner.invoke(app, ["index", "build", str(store.path), "--features", "text/minilm", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["n_vectors"] == 385
    r = runner.invoke(app, ["search", str(store.path), "My cat is missing and I can't find her", "-k", "4", "--json"])
    out = json.loads(r.output)
    assert len(out["neighbours"]) == 4 and {"id", "dialogue", "speaker", "text", "label", "similarity"} <= set(
        out["neighbours"][0])
    r = runner.invoke(app, ["search", str(store.path), "d999_u99"])
    assert r.exit_code == 1 and "unknown utterance id" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["search", str(store.path), "hello", "--split", "nope"])
    assert r.exit_code == 1 and "no split" in r.output


def test_search_by_id_shows_the_utterance_itself(store):
    """A query by utterance id reports (and prints) that utterance's words, not only its id again."""
    build_index(store, ["text/minilm"])
    t = store.table
    row = t[t["id"] == "d001_u01"].iloc[0]
    out = search(store, "d001_u01", k=3)
    assert out["query_utterance"]["text"] == row["text"] and out["query_utterance"]["speaker"] == row["speaker"]
    assert search(store, "I am furious with you", k=3)["query_utterance"] is None
    r = CliRunner().invoke(app, ["search", str(store.path), "d001_u01", "-k", "3"], terminal_width=200)
    assert r.exit_code == 0, r.output
    title = " ".join(r.output.split("┏")[0].split())  # the table's title, unwrapped
    assert row["text"] in title and "d001_u01" in title and row["speaker"] in title, r.output


def test_checkpoint_embedding_index(store, tmp_path):
    """Index a trained head's penultimate layer; staleness follows the checkpoint's weights."""
    from emostore.heads import checkpoint as ckpt_io
    from emostore.heads.data import load_data
    from emostore.heads.train import TrainConfig, fit

    data = load_data(store, ["text/minilm"], "emotion")
    result = fit(data, "mlp", {"hidden": 32}, TrainConfig(epochs=3, device="cpu"))
    ckpt = ckpt_io.save(result, data, tmp_path / "ckpt", store=store)
    idx = build_index(store, checkpoint=ckpt, kind="ivf", nlist=4, nprobe=4)
    assert idx.meta["dim"] == 32 and idx.meta["layer"] == "penultimate" and idx.meta["n_vectors"] == 385
    out = search(store, "d030_u01", k=3, index=idx.name)
    assert len(out["neighbours"]) == 3 and "d030_u01" not in [h["id"] for h in out["neighbours"]]
    with pytest.raises(UserError, match="takes utterance ids"):
        search(store, "a brand new sentence", index=idx.name)
    retrained = fit(data, "mlp", {"hidden": 32}, TrainConfig(epochs=3, seed=1, device="cpu"))
    ckpt_io.save(retrained, data, ckpt, store=store, overwrite=True)
    with pytest.raises(StaleIndex, match="retrained"):
        search(store, "d030_u01", index=idx.name)


def test_a_text_query_goes_to_an_index_that_takes_text(store, tmp_path):
    """After `index build --checkpoint` (whose index sorts first), a plain text search uses the
    text index; an id still goes to the first index; with no index for text, one line says so."""
    from emostore.heads import checkpoint as ckpt_io
    from emostore.heads.data import load_data
    from emostore.heads.train import TrainConfig, fit

    data = load_data(store, ["text/minilm"], "emotion")
    ckpt = ckpt_io.save(fit(data, "mlp", {"hidden": 16}, TrainConfig(epochs=1, device="cpu")), data,
                        tmp_path / "context", store=store)
    build_index(store, checkpoint=ckpt)
    other = ckpt_io.save(fit(data, "mlp", {"hidden": 16}, TrainConfig(epochs=1, seed=1, device="cpu")), data,
                         tmp_path / "another", store=store)
    build_index(store, checkpoint=other)
    with pytest.raises(UserError, match="none of the indexes of .* takes a text query .*another-embedding, "
                                        "context-embedding.*--features text`"):
        search(store, "I told you so")
    build_index(store, ["text/minilm"])
    r = CliRunner().invoke(app, ["search", str(store.path), "I told you so", "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["index"] == "text-minilm"
    assert search(store, "d030_u01", k=3)["index"] == "another-embedding"


def test_label_shares_with_negative_similarities(tmp_path):
    """z-scored eGeMAPS of the sample's speech: the 3 nearest anger rows to a sad utterance are all
    below zero similarity; 3 of 3 neighbours labelled anger give anger a share of 1.0, not 0."""
    pytest.importorskip("opensmile", reason="the audio extra is not installed")
    from emostore.extract.encoders.opensmile import OpenSmileEncoder
    from emostore.extract.runner import run_extraction
    from emostore.ingest.run import ingest
    from emostore.ingest.sample import SAMPLE

    store, _ = ingest("sample", SAMPLE, tmp_path / "s")
    run_extraction(store, OpenSmileEncoder.create(feature_set="egemaps"), progress=False)
    build_index(store, ["audio/egemaps"])
    out = search(store, "d002_u01", k=3, label="anger")
    assert [h["label"] for h in out["neighbours"]] == ["anger"] * 3
    assert all(h["similarity"] < 0 for h in out["neighbours"])
    assert out["labels"] == {"anger": {"count": 3, "share": 1.0}} and out["nearest_emotion"] == "anger"
    mixed = search(store, "d002_u01", k=10)["labels"]
    assert sum(v["share"] for v in mixed.values()) == pytest.approx(1.0, abs=1e-3)
    assert sum(v["count"] for v in mixed.values()) == 10


def test_multimodal_store_audio_and_media_queries(tmp_path):
    """A store with text and audio (Emo-DB speech): audio features are z-scored before cosine, and a
    wav file or a video's soundtrack is a query encoded like the store."""
    optional("opensmile", "audio")
    from conftest import shared_data

    from emostore.extract.encoders.opensmile import OpenSmileEncoder
    from emostore.extract.runner import run_extraction
    from emostore.ingest.run import ingest

    wavs = sorted(shared_data("emodb", "wav").glob("*.wav"))[:40]
    csv = tmp_path / "emodb.csv"
    csv.write_text("media,emotion\n" + "".join(f"{p},{p.stem[5]}\n" for p in wavs))
    store, _ = ingest("csv", [csv], tmp_path / "store")
    run_extraction(store, OpenSmileEncoder.create(feature_set="egemaps"), progress=False)
    idx = build_index(store, ["audio/egemaps"])
    assert set(idx.meta["standardisation"]) == {"audio/egemaps"}
    out = search(store, str(wavs[3]), k=3)
    assert out["query_kind"] == "audio query"
    top = out["neighbours"][0]
    assert top["id"] == store.table["id"].iat[3] and top["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert out["neighbours"][1]["similarity"] < 0.99  # z-scored: other voices are not all ~1
    video = shared_data("face_media", "single_face.mp4")
    assert search(store, str(video), k=2)["query_kind"] == "video query"
    with pytest.raises(UserError, match="text query can only"):
        search(store, "an utterance as text")


def test_knn_head_uses_faiss_and_agrees_with_exact_search(sample_store):
    """The knn head's FAISS neighbours give the same votes as the exact torch search."""
    import torch

    from emostore.heads.data import load_data
    from emostore.heads.train import TrainConfig, fit, predict_rows

    data = load_data(sample_store, ["text/minilm"], "emotion")
    model = fit(data, "knn", {"k": 10}, TrainConfig(device="cpu")).model
    rows = data.rows("test")
    assert model._use_faiss(data.mask[torch.as_tensor(rows)])
    with_faiss = predict_rows(model, data, rows)
    assert hasattr(model, "_index") and model._index.ntotal == len(data.rows("train"))
    model.params.backend = "torch"
    exact = predict_rows(model, data, rows)
    torch.testing.assert_close(with_faiss, exact, atol=1e-4, rtol=1e-4)


def test_faiss_settings_blas_path_and_threads_give_exact_answers(monkeypatch):
    """Batches below and above the BLAS switch, with 1 and 2 threads, find what brute force finds."""
    from emostore.search import settings

    rng = np.random.default_rng(3)
    X = normalise(rng.standard_normal((20_000, 96)).astype(np.float32))
    idx = NearestIndex.build(X, np.arange(len(X)))
    assert faiss.cvar.distance_compute_blas_threshold == settings.BLAS_MIN_QUERIES * 96
    for threads in ("1", "2"):
        monkeypatch.setenv("EMOSTORE_FAISS_THREADS", threads)
        assert settings.threads() == int(threads)
        for nq in (1, settings.BLAS_MIN_QUERIES, 7, 100):  # 1 query: a matrix-vector product; more: BLAS
            q = normalise(X[:nq] + 0.05 * rng.standard_normal((nq, 96)).astype(np.float32))
            sims, rows = idx.search(q, 10)
            brute = np.argsort(-(q @ X.T), axis=1)[:, :10]
            np.testing.assert_array_equal(rows, brute)
            np.testing.assert_allclose(sims, np.take_along_axis(q @ X.T, brute, 1), atol=1e-5)
    small = NearestIndex.build(X[:15], np.arange(15))
    np.testing.assert_array_equal(small.search(X[:1], 10)[1][0], np.argsort(-(X[:15] @ X[0]))[:10])
    sims, rows = small.search(X[:1], 20)  # more neighbours asked for than there are vectors: -1 rows, as FAISS
    np.testing.assert_array_equal(rows[0, :15], np.argsort(-(X[:15] @ X[0])))
    assert (rows[0, 15:] == -1).all() and np.isfinite(sims[0, :15]).all()
    monkeypatch.setenv("EMOSTORE_FAISS_THREADS", "many")
    with pytest.raises(UserError, match="EMOSTORE_FAISS_THREADS"):
        idx.search(X[:1], 3)
    import torch

    torch.set_num_threads(2)
    monkeypatch.setenv("EMOSTORE_FAISS_THREADS", "1")
    idx.search(X[:3], 3)  # FAISS and PyTorch share one OpenMP runtime: a search gives back the count it found
    NearestIndex.build(X[:100], np.arange(100))
    assert torch.get_num_threads() == 2
    monkeypatch.delenv("EMOSTORE_FAISS_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert 1 <= settings.threads() == settings.free_cores() <= settings.cores()


@pytest.mark.skipif(not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0,
                    reason="no GPU: FAISS on the GPU is measured by `bench/search_speed.py --gpu`")
@pytest.mark.parametrize("kind,params", [("flat", {}), ("ivf", {"nlist": 16, "nprobe": 16})])
def test_gpu_index_answers_like_the_cpu(store, kind, params):
    rows, X, _ = store_vectors(store, ["text/minilm"])
    idx = NearestIndex.build(X, rows, kind=kind, **params)
    assert idx._gpu is not None
    gpu_rows = idx.search(X[:20], 10)[1]
    idx._gpu = None
    np.testing.assert_array_equal(gpu_rows[:, :5], idx.search(X[:20], 10)[1][:, :5])


def test_ivf_with_too_few_vectors_per_list_says_what_to_do_in_one_line(store, capfd):
    """385 vectors for 64 lists: FAISS's raw clustering warning is replaced by one note naming --nlist."""
    r = CliRunner().invoke(app, ["index", "build", str(store.path), "--features", "text/minilm", "--kind", "ivf",
                                 "--nlist", "64", "--quiet"], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert r.stderr.splitlines() == ["  note: ivf: 385 training vectors for 64 lists, fewer than the 39 per list that "
                                     "place them well; use --nlist 9 or fewer (leaving it out picks about 4 x "
                                     "sqrt(vectors)), or a bigger --train-size"]
    assert "clustering" not in capfd.readouterr().err  # FAISS's own warning, printed by its C++ code
    r = CliRunner().invoke(app, ["index", "build", str(store.path), "--features", "text/minilm", "--kind", "ivf",
                                 "--json", "--quiet"])
    assert r.exit_code == 0 and json.loads(r.stdout)["notes"] == [] and r.stderr == ""
    r = CliRunner().invoke(app, ["index", "build", str(store.path), "--features", "text/minilm", "--kind", "ivf",
                                 "--nlist", "1000"])
    assert r.exit_code == 1 and "385 training vectors cannot place 1,000 lists; use --nlist 9 or fewer" in r.stderr
    idx = NearestIndex.build(np.eye(8, dtype=np.float32)[np.arange(100) % 8], np.arange(100), kind="ivf", nlist=4)
    assert idx.meta["notes"] and "use --nlist 2 or fewer" in idx.meta["notes"][0]
