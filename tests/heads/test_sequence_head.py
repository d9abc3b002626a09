"""The ``sequence`` head on the sample's real eGeMAPS LLD frames (42 rows with speech, the others
without frames): bulk frame reading, padding and cropping, masks, fusion with text, checkpoints,
the CLI, and the one-line error for feature sets without frames."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from emostore.cli import app
from emostore.errors import UserError
from emostore.heads import checkpoint
from emostore.heads.data import Frames, load_data, read_frames
from emostore.heads.evaluate import evaluate
from emostore.heads.train import TrainConfig, fit, predict_rows
from emostore.store.feature_set import FeatureSet

LLD = "audio/egemaps-lld"
FEATURES = [LLD, "text/minilm"]
runner = CliRunner()


@pytest.fixture(scope="module")
def data(audio_sample_store):
    return load_data(audio_sample_store, FEATURES, "emotion", frames=True)


def test_frames_are_read_a_chunk_at_a_time_and_standardised_on_train(audio_sample_store, data, monkeypatch):
    fs = audio_sample_store.feature_set(LLD)
    assert fs.n_chunks == 7  # rows with and without speech are spread over every chunk

    def per_row(*args, **kwargs):
        raise AssertionError("frames must not be read one row at a time")

    monkeypatch.setattr(FeatureSet, "read_sequence", per_row)
    values, lengths = read_frames(fs)
    reference = fs.read_sequences()  # the store's own reader, chunk by chunk
    np.testing.assert_array_equal(lengths, [len(s) for s in reference])
    np.testing.assert_array_equal(values, np.concatenate([s for s in reference if len(s)]))
    _, _, mask = fs.read()
    assert mask.sum() == 42 and (lengths[mask] > 100).all() and (lengths[~mask] == 0).all()

    frames = data.frames[0]
    assert data.frame_dims == [25, None] and data.frames[1] is None
    assert torch.equal(data.mask[:, 0], torch.from_numpy(mask)) and data.mask[:, 1].all()
    train = torch.from_numpy((data.split == "train") & mask)
    owner = torch.repeat_interleave(torch.arange(len(lengths)), frames.lengths)
    z = frames.values[train[owner]]
    assert z.mean(0).abs().max() < 1e-3 and ((z.std(0) - 1).abs() < 1e-2).all()
    assert frames.values[~train[owner]].mean(0).abs().max() > 1e-2  # dev/test frames are not in the statistics
    raw = (values - np.asarray(data.norm[LLD]["frame_mean"])) / np.asarray(data.norm[LLD]["frame_std"])
    np.testing.assert_allclose(frames.values.numpy(), raw, rtol=1e-5, atol=1e-5)


def test_padding_and_cropping():
    values = torch.arange(20, dtype=torch.float32).unsqueeze(1)
    frames = Frames(values, torch.tensor([0, 3, 3, 13]), torch.tensor([3, 0, 10, 7]))
    x, lengths = frames.batch(torch.tensor([0, 1, 2, -1]))
    assert lengths.tolist() == [3, 0, 10, 0] and x.shape == (4, 10, 1)
    assert x[0, :3, 0].tolist() == [0, 1, 2] and (x[0, 3:] == 0).all() and (x[1] == 0).all() and (x[3] == 0).all()
    assert x[2, :, 0].tolist() == list(range(3, 13))
    x, lengths = frames.batch(torch.tensor([2, 3, 0]), max_frames=4)
    assert lengths.tolist() == [4, 4, 3]
    assert x[0, :, 0].tolist() == [6, 7, 8, 9] and x[1, :, 0].tolist() == [14, 15, 16, 17]  # central crop
    torch.manual_seed(0)
    starts = set()
    for _ in range(60):
        x, _ = frames.batch(torch.tensor([2]), max_frames=4, random_crop=True)
        window = x[0, :, 0].tolist()
        assert window == list(range(int(window[0]), int(window[0]) + 4)) and 3 <= window[0] <= 9
        starts.add(window[0])
    assert len(starts) == 7  # every crop position of a 10-frame sequence is drawn


@pytest.mark.parametrize("encoder", ["gru", "transformer"])
def test_masked_rows_and_rows_without_frames_change_nothing(data, encoder):
    params = {"encoder": encoder, "hidden": 32, "max_frames": 200, "fusion": "gated"}
    result = fit(data, "sequence", params, TrainConfig(epochs=3, patience=5, modality_dropout=0.3, device="cpu"))
    model = result.model
    rows = np.arange(len(data))
    before = predict_rows(model, data, rows)
    assert torch.isfinite(before).all()
    without = ~data.mask[:, 0]
    assert int(without.sum()) == len(data) - 42
    # a row without frames predicts from its text alone: exactly as a row whose frames are masked
    speech = int(torch.nonzero(data.mask[:, 0])[0])
    frames = data.frames[0]
    saved_values, saved_mask = frames.values.clone(), data.mask.clone()
    try:
        data.mask[speech, 0] = False
        start, n = int(frames.offsets[speech]), int(frames.lengths[speech])
        frames.values[start:start + n] = torch.randn(n, 25) * 1e3
        frames.values[start:start + n:5] = torch.nan
        masked = predict_rows(model, data, np.array([speech]))
        frames.values[start:start + n] = -7.0
        assert torch.equal(masked, predict_rows(model, data, np.array([speech])))
        text_only = model(
            [torch.zeros(1, 25 * 2), data.xs[1][speech:speech + 1]], torch.tensor([[False, True]]),
            [(torch.zeros(1, 1, 25), torch.zeros(1, dtype=torch.long)), None])
        assert torch.allclose(masked, text_only, atol=1e-6)
    finally:
        frames.values.copy_(saved_values)
        data.mask.copy_(saved_mask)
    assert torch.equal(before, predict_rows(model, data, rows))
    # the frames of a row with speech do matter
    data.frames[0].values[start:start + n] *= -1
    try:
        assert not torch.equal(before[speech], predict_rows(model, data, np.array([speech]))[0])
    finally:
        frames.values.copy_(saved_values)


def test_checkpoint_round_trip_and_cli(audio_sample_store, data, tmp_path, monkeypatch):
    result = fit(data, "sequence", {"hidden": 32, "max_frames": 300}, TrainConfig(epochs=2, device="cpu"))
    path = checkpoint.save(result, data, tmp_path / "seq", store=audio_sample_store)
    meta = json.loads((path / "checkpoint.json").read_text())
    assert [f.get("frame_dim") for f in meta["feature_sets"]] == [25, None]
    assert len(meta["normalisation"][LLD]["frame_mean"]) == 25

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a checkpoint must load without unpickling")

    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(torch, "load", no_unpickling)
    loaded = checkpoint.load(path, audio_sample_store)
    rows = data.rows("test")
    assert torch.equal(predict_rows(result.model, data, rows), predict_rows(loaded.model, data, rows))
    ev = evaluate(path, audio_sample_store.path, "test")
    assert ev.metrics["n"] == 66 and ev.metrics["feature_sets"] == FEATURES

    out = tmp_path / "cli"
    r = runner.invoke(app, ["train", str(audio_sample_store.path), "-f", ",".join(FEATURES), "--head", "sequence",
                            "-p", "encoder=transformer", "-p", "hidden=32", "-p", "fusion=attention",
                            "--modality-dropout", "0.2", "--epochs", "2", "--device", "cpu", "--out", str(out),
                            "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["params"]["encoder"] == "transformer"
    r = runner.invoke(app, ["evaluate", str(out), "--store", str(audio_sample_store.path), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["n"] == 66


def test_feature_sets_without_frames_get_a_one_line_error(audio_sample_store, tmp_path):
    r = runner.invoke(app, ["train", str(audio_sample_store.path), "-f", "audio/egemaps,text/minilm",
                            "--head", "sequence", "--out", str(tmp_path / "c")])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert "reads frame sequences, but none of audio/egemaps, text/minilm keeps them" in r.output
    assert not (tmp_path / "c").exists()
    with pytest.raises(UserError, match="needs at least one feature set with frame sequences"):
        from emostore.heads.base import build_head

        build_head("sequence", [88], 7)
    # in a sweep, that run fails with its error and the others go on
    r = runner.invoke(app, ["sweep", str(audio_sample_store.path), "--heads", "sequence,linear", "-f", "audio/egemaps",
                            "-f", LLD, "--seeds", "1", "--epochs", "1", "-p", "sequence.hidden=16", "--device", "cpu",
                            "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert [(f["head"], f["features"]) for f in out["failures"]] == [("sequence", ["audio/egemaps"])]
    assert "keeps them" in out["failures"][0]["error"]
    assert sorted((run["head"], run["features"][0]) for run in out["runs"]) == [
        ("linear", "audio/egemaps"), ("linear", LLD), ("sequence", LLD)]
