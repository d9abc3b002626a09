"""Self-supervised speech encoders through the real loading and extraction path: tiny random
wav2vec 2.0, HuBERT and WavLM models saved with ``save_pretrained`` (no weights can be downloaded
here), run by the CLI on the sample's speech; windows, a real ``kill -9`` and resume, bad model
folders and bad audio, and prediction from audio and video with heads trained on the features."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from conftest import SAMPLE, optional, sample_with_audio_csv
from typer.testing import CliRunner

from emostore.cli import app
from emostore.extract.audio_io import load_audio
from emostore.extract.encoders.ssl import SSLEncoder
from emostore.ingest.base import finalize
from emostore.ingest.run import ingest
from emostore.store import Store

for _module in ("av", "soundfile", "soxr"):  # the sample's speech and the videos made here are read with them
    optional(_module, "audio")
FAMILIES = ("wav2vec2", "hubert", "wavlm")
SPEECH_ROWS = 42
runner = CliRunner()


def tiny_model(family: str, folder: Path) -> Path:
    """A random model of ``family``: 2 layers, hidden size 32, 3 convolutions (hop 80 samples)."""
    from transformers import (
        HubertConfig,
        HubertModel,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Model,
        WavLMConfig,
        WavLMModel,
    )

    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "conv_dim": (32, 32, 32), "conv_stride": (5, 4, 4), "conv_kernel": (10, 4, 4),
             "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}
    config_cls, model_cls = {"wav2vec2": (Wav2Vec2Config, Wav2Vec2Model), "hubert": (HubertConfig, HubertModel),
                             "wavlm": (WavLMConfig, WavLMModel)}[family]
    if family == "wavlm":
        small.update({"num_buckets": 32, "max_bucket_distance": 80})
    torch.manual_seed(0)
    model_cls(config_cls(**small)).eval().save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("ssl_models")
    return {f: tiny_model(f, base / f) for f in FAMILIES}


def sample_store(path: Path) -> Store:
    path.parent.mkdir(parents=True, exist_ok=True)
    store, _ = ingest("csv", [sample_with_audio_csv(path.parent)], path, dataset="sample")
    return store


def extract(store: Path, model: Path, *extra: str) -> dict:
    r = runner.invoke(app, ["extract", "audio", str(store), "--encoder", "ssl", "--model", str(model), "--json",
                            "--quiet", *extra])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def reference_hidden(model_dir: Path, path: str) -> list[np.ndarray]:
    """Every hidden state of the whole file, computed directly with transformers."""
    from transformers import AutoFeatureExtractor, AutoModel

    fe = AutoFeatureExtractor.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    x = fe(load_audio(path, 16000), sampling_rate=16000, return_tensors="pt")["input_values"]
    with torch.inference_mode():
        return [h[0].numpy() for h in model(x, output_hidden_states=True).hidden_states]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_fills_a_complete_feature_set(models, tmp_path, family):
    store = sample_store(tmp_path / "store")
    # float32: the values are compared with a float32 forward pass of the model
    out = extract(store.path, models[family], "--frames", "--layers", "all", "--precision", "float32")
    assert out["complete"] and out["dim"] == 3 * 32 and out["seq_dim"] == 32 and out["encoder"] == "ssl"
    assert out["rows_failed"] == len(store) - SPEECH_ROWS
    assert {f["reason"] for f in out["failures"]} == {"no audio: the utterance has no media file"}
    fs = Store.open(store.path).feature_set(f"audio/{family}")
    assert fs.layers == 3 and fs.seq_dim == 32
    cfg = fs.config
    assert cfg["model_type"] == family and cfg["layers"] == "0,1,2" and cfg["frame_layer"] == 2
    assert len(cfg["model_sha256"]) == 64 and cfg["sample_rate"] == 16000
    _, X, mask = fs.read()
    assert mask.sum() == SPEECH_ROWS and np.isfinite(X[mask]).all() and np.isnan(X[~mask]).all()
    frames = fs.read_sequences()
    table = store.table
    for row in np.flatnonzero(mask)[:3]:
        hidden = reference_hidden(models[family], table["media"].iat[row])
        np.testing.assert_allclose(X[row], np.concatenate([h.mean(0) for h in hidden]), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(frames[row], hidden[2], rtol=1e-4, atol=1e-5)
    assert all(len(frames[r]) == 0 for r in np.flatnonzero(~mask))


def test_long_audio_runs_in_overlapping_windows(models, tmp_path):
    from emostore.extract.encoders.ssl import SSLConfig

    path = str(next((SAMPLE.parent / "media").glob("*.flac")))
    n = len(load_audio(path, 16000))
    enc = SSLEncoder(SSLConfig(model=str(models["wavlm"]), frames=True, window_s=1.0, overlap_s=0.25),
                     device="cpu")
    wins = enc.windows(n)
    assert len(wins) >= 3 and wins[0][0] == 0 and wins[-1][1] == n
    assert all(b[0] < a[1] for a, b in itertools.pairwise(wins))  # consecutive windows overlap
    assert all(e - s == 16000 for s, e in wins)
    table = pd.DataFrame({"media": [path], "start": [np.nan], "end": [np.nan]})
    out = enc.encode_rows(table, np.array([0]))
    whole = reference_hidden(models["wavlm"], path)
    assert out.ok[0] and abs(len(out.sequences[0]) - len(whole[2])) <= len(wins)
    # the stitched frames follow the whole-file frames where the context is the same (window centres)
    a, b = out.sequences[0], whole[2]
    k = min(len(a), len(b))
    corr = np.corrcoef(a[:k].ravel(), b[:k].ravel())[0, 1]
    assert corr > 0.5


CHUNK = 16


def cli(store: Path, model: Path) -> list[str]:
    return [sys.executable, "-m", "emostore.cli", "extract", "audio", str(store), "--encoder", "ssl", "--model",
            str(model), "--frames", "--chunk-rows", str(CHUNK), "--device", "cpu", "--quiet"]


def done_count(store: Path) -> int:
    try:
        return int(zarr.open_array(str(store / "features" / "audio" / "wavlm" / "done"), mode="r")[:].sum())
    except (FileNotFoundError, KeyError, ValueError):  # not created yet
        return 0


@pytest.mark.slow
def test_kill_9_then_resume(models, tmp_path):
    # the reference: the same command, uninterrupted (in a process of its own like the victim's, so
    # both run with the same torch threads whatever earlier tests did to this process)
    ref = sample_store(tmp_path / "ref" / "store")
    subprocess.run(cli(ref.path, models["wavlm"]), check=True, capture_output=True, timeout=300)
    victim = sample_store(tmp_path / "victim" / "store")
    n_rows = len(victim)
    seen = []
    for target in (None, CHUNK, n_rows // 2):
        proc = subprocess.Popen(cli(victim.path, models["wavlm"]), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + 120
        if target is None:
            time.sleep(1.0)  # while the model loads
        else:
            while done_count(victim.path) < target and proc.poll() is None and time.time() < deadline:
                time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        seen.append(done_count(victim.path))
    assert seen == sorted(seen) and seen[-1] < n_rows, f"killed too late to test anything: {seen}"
    fs = Store.open(victim.path).feature_set("audio/wavlm")
    done = fs.done()
    _, X, _ = fs.read()
    _, Xr, _ = ref.read("audio/wavlm")
    differ = [r for r in np.flatnonzero(done) if not np.array_equal(X[r], Xr[r], equal_nan=True)]
    errors = dict((i, e) for _, i, e in fs.errors())
    ids = victim.table["id"]
    assert not differ, (f"done rows differ from the reference (kills at {seen} rows): "
                        + "; ".join(f"row {r} {ids.iat[r]}: error {errors.get(ids.iat[r])!r}, "
                                    f"max diff {np.nanmax(np.abs(X[r] - Xr[r])) if np.isfinite(X[r]).any() else 'nan'}"
                                    for r in differ[:5]))
    finish = subprocess.run(cli(victim.path, models["wavlm"]), capture_output=True, text=True, timeout=300,
                            check=False)
    assert finish.returncode == 0, finish.stderr
    fs, fr = Store.open(victim.path).feature_set("audio/wavlm"), ref.feature_set("audio/wavlm")
    assert fs.is_complete() and fs.config_hash == fr.config_hash
    for a, b in zip(fs.read(), fr.read()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(fs.read_sequences(), fr.read_sequences()):
        np.testing.assert_array_equal(a, b)


def test_a_folder_that_is_not_a_speech_model_gets_one_line(models, tmp_path):
    store = sample_store(tmp_path / "store")
    empty = tmp_path / "empty"
    empty.mkdir()
    text_model = tmp_path / "bert"
    text_model.mkdir()
    (text_model / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    no_extractor = tmp_path / "no_extractor"
    no_extractor.mkdir()
    for f in ("config.json", "model.safetensors"):
        (no_extractor / f).write_bytes((models["hubert"] / f).read_bytes())
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ("config.json", "preprocessor_config.json"):
        (broken / f).write_bytes((models["hubert"] / f).read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    cases = {empty: "has no config.json", text_model: "is a bert model, not a self-supervised speech encoder",
             no_extractor: "has no feature extractor (preprocessor_config.json)", broken: "cannot be loaded",
             tmp_path / "missing": "no such folder"}
    for folder, message in cases.items():
        r = runner.invoke(app, ["extract", "audio", str(store.path), "--encoder", "ssl", "--model", str(folder)])
        assert r.exit_code == 1, (folder, r.output)
        assert len(r.output.strip().splitlines()) == 1 and message in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["extract", "audio", str(store.path), "--encoder", "ssl"])
    assert r.exit_code == 1 and "needs --model" in r.output
    assert Store.open(store.path).feature_sets() == []  # nothing was created
    # a good model afterwards works on the same store
    assert extract(store.path, models["hubert"], "--layers", "last")["dim"] == 32


def test_bad_audio_rows_are_masked_and_the_batch_goes_on(models, tmp_path):
    good = sorted((SAMPLE.parent / "media").glob("*.flac"))[:2]
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF" + os.urandom(64))
    rows = [{"media": str(good[0])}, {"media": str(tmp_path / "missing.flac")}, {"media": str(corrupt)},
            {"media": str(good[1]), "start": 0.5, "end": 0.503}, {"media": str(good[1])}]
    df = pd.DataFrame([{"id": f"u{i}", "dialogue": "d", "turn": i, **r} for i, r in enumerate(rows)])
    store = Store.create(tmp_path / "s", finalize(df, "t", [], "t"), dataset="t")
    out = extract(store.path, models["wav2vec2"])
    reasons = {f["id"]: f["reason"] for f in out["failures"]}
    assert out["complete"] and sorted(reasons) == ["u1", "u2", "u3"]
    assert reasons["u1"].startswith("missing file") and reasons["u2"].startswith("corrupt file")
    assert reasons["u3"].startswith("too short for wav2vec2")
    _, X, mask = Store.open(store.path).feature_set("audio/wav2vec2").read()
    assert mask.tolist() == [True, False, False, False, True] and np.isfinite(X[mask]).all()


def test_heads_on_ssl_features_predict_from_audio_and_video(models, tmp_path):
    from emostore.heads import checkpoint
    from emostore.heads.train import predict_rows
    from emostore.sample.clips import photo, write_clip
    from emostore.serve.predictor import Predictor

    store = sample_store(tmp_path / "store")
    extract(store.path, models["wavlm"], "--frames")
    ckpts = {}
    for head, params in (("sequence", ["-p", "hidden=16"]), ("mlp", ["-p", "hidden=16"])):
        ckpts[head] = tmp_path / head
        r = runner.invoke(app, ["train", str(store.path), "-f", "audio/wavlm", "--head", head, *params,
                                "--epochs", "2", "--device", "cpu", "--out", str(ckpts[head])])
        assert r.exit_code == 0, r.output
    # the mlp learns a softmax weighting of the 3 stacked layers (SUPERB's weighted sum)
    ck = checkpoint.load(ckpts["mlp"], store)
    weights = ck.model.state_dict()["layer_mix.weights.0"]
    assert weights.shape == (3,) and ck.model.dims == [32]
    table = store.table
    row = int(np.flatnonzero(table["media"].notna().to_numpy() & (table["split"] == "test").to_numpy())[0])
    audio = Path(table["media"].iat[row])
    clip = write_clip(audio, tmp_path / "clip.mp4", photo())
    for head, path in ckpts.items():
        ck = checkpoint.load(path, store)
        data = ck.load_data(store)
        ref = torch.softmax(predict_rows(ck.model, data, np.array([row]))[0], 0).numpy()
        pred = Predictor(path, device="cpu")
        for given in ({"audio": audio}, {"video": clip}):
            got = pred.predict(**given)
            assert got["modalities"] == {"audio/wavlm": {"present": True}}
            probs = np.array([got["probabilities"][lab] for lab in data.target.labels])
            tol = 1e-3 if "audio" in given else 0.05  # the video's AAC track is a lossy copy of the audio
            assert np.abs(probs - ref).max() < tol, (head, given)
