"""Per-speaker normalisation on real Emo-DB speech: each speaker's features centred on their own."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import optional, shared_data


@pytest.fixture(scope="module")
def emodb(tmp_path_factory):
    optional("opensmile", "audio")
    emodb = shared_data("emodb")
    from emostore.extract.encoders.opensmile import OpenSmileEncoder
    from emostore.extract.runner import run_extraction
    from emostore.ingest.run import ingest

    lines = (emodb / "labels.csv").read_text().splitlines()[1:]
    rows = [line.split(",") for line in lines]
    keep = [r for spk in ("03", "08", "09") for r in [r for r in rows if r[1] == spk][:30]]
    tmp = tmp_path_factory.mktemp("emodb")
    csv = tmp / "emodb.csv"
    csv.write_text("id,speaker,emotion,media,split\n" + "".join(
        f"{f[:-4]},{spk},{emo},{emodb / 'wav' / f},{'dev' if spk == '09' else 'train'}\n"
        for f, spk, _, emo, *_ in keep))
    store, _ = ingest("csv", [csv], tmp / "store")
    run_extraction(store, OpenSmileEncoder.create(feature_set="egemaps"), progress=False)
    return store


def test_speaker_means_removed(emodb):
    from emostore.heads.data import load_data

    speakers = emodb.table["speaker"].to_numpy()
    plain = load_data(emodb, ["audio/egemaps"], "emotion").xs[0].numpy()
    norm = load_data(emodb, ["audio/egemaps"], "emotion", speaker_norm=True).xs[0].numpy()
    spread_plain = max(np.abs(plain[speakers == s].mean(0)).mean() for s in set(speakers))
    spread_norm = max(np.abs(norm[speakers == s].mean(0)).mean() for s in set(speakers))
    assert spread_plain > 0.15 and spread_norm < 0.05 and spread_norm < spread_plain / 4


def test_speaker_norm_checkpoint_trains_evaluates_and_refuses_prediction(emodb, tmp_path):
    from typer.testing import CliRunner

    from emostore.cli import app
    from emostore.errors import UserError
    from emostore.serve.predictor import Predictor

    runner = CliRunner()
    r = runner.invoke(app, ["train", str(emodb.path), "--features", "audio/egemaps", "--head", "linear",
                            "--speaker-norm", "--out", str(tmp_path / "ck"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path / "ck"), "--store", str(emodb.path), "--split", "dev", "--json"])
    assert r.exit_code == 0, r.output
    with pytest.raises(UserError, match="per-speaker normalisation"):
        Predictor(tmp_path / "ck", device="cpu")


def test_a_feature_constant_for_the_training_speaker_cannot_blow_up(tmp_path):
    """Feature 0 barely moves for the one training speaker and varies for the test speaker: the
    per-speaker z-scores stay of order 1 for both (no second standardisation divides by the
    training speaker's tiny spread), and the constant feature is 0 for the training speaker."""
    import pandas as pd

    from emostore.heads.data import load_data
    from emostore.ingest.base import finalize
    from emostore.store import Store

    rng = np.random.default_rng(0)
    n = 40
    table = finalize(pd.DataFrame({"id": [f"u{i}" for i in range(n)], "dialogue": [f"d{i}" for i in range(n)],
                                   "turn": 0, "speaker": ["A"] * 20 + ["B"] * 20,
                                   "text": "x", "emotion": ["joy", "anger"] * 20,
                                   "split": ["train"] * 20 + ["test"] * 20}), "toy", [], "toy")
    store = Store.create(tmp_path / "s", table, dataset="toy")
    X = rng.normal(size=(n, 3)).astype(np.float32)
    X[:20, 0] = 5.0 + rng.normal(scale=5e-4, size=20)  # nearly constant for the training speaker
    X[20:, 0] = 5.0 + rng.normal(scale=2.0, size=20)
    fs = store.create_feature_set("audio/toy", dim=3, config={"toy": 1}, encoder="toy", version={}, chunk_rows=64)
    fs.write_chunk(0, X, np.ones(n, bool), [""] * n)
    data = load_data(store, ["audio/toy"], "emotion", speaker_norm=True)
    Z = data.xs[0].numpy()
    assert np.abs(Z).max() < 5, np.abs(Z).max(0)
    assert (Z[:20, 0] == 0).all() and abs(Z[20:, 0].std() - 1) < 1e-3
    assert np.allclose(data.norm["audio/toy"]["std"], 1) and np.allclose(data.norm["audio/toy"]["mean"], 0)
