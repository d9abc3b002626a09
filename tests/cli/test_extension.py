"""A new head and a new encoder are one class each: defined here, used through the whole CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
from torch import nn
from typer.testing import CliRunner

from emostore.cli import app
from emostore.extract import base as encoder_base
from emostore.extract.base import Encoded, Encoder, EncoderConfig
from emostore.heads import base as head_base
from emostore.heads.base import Head, HeadParams, fuse, fused_dim

SAMPLE_CSV = "emostore/sample/dialogues.csv"


@dataclass
class ShapeConfig(EncoderConfig):
    scale: float = 1.0


class ShapeEncoder(Encoder):
    """Characters, words, '!' and '?' per utterance, times ``scale``."""

    modality = "text"
    kind = "test-shape"
    Config = ShapeConfig

    def __init__(self, config: ShapeConfig, *, name: str | None = None):
        self.config, self.name, self.dim, self.runtime = config, name or "shape", 4, {}

    def encode_rows(self, table, rows, progress=None) -> Encoded:
        texts = [table["text"].iat[r] for r in rows]
        ok = np.array([bool(t and t.strip()) for t in texts])
        values = np.array([[len(t), len(t.split()), t.count("!"), t.count("?")] if t else [0] * 4
                           for t in texts], np.float32) * self.config.scale
        return Encoded(values, ok, ["" if good else "no text" for good in ok])


@dataclass
class TinyParams(HeadParams):
    hidden: int = 8


class TinyHead(Head):
    """``test-tiny``: one hidden layer over the fused inputs."""

    name = "test-tiny"
    Params = TinyParams

    def __init__(self, dims, n_out, params: TinyParams):
        super().__init__(dims, n_out, params)
        self.out = nn.Sequential(nn.Linear(fused_dim(dims), params.hidden), nn.ReLU(), nn.Linear(params.hidden, n_out))

    def forward(self, xs, mask):
        return self.out(fuse(xs, mask))


@pytest.fixture
def registered():
    encoder_base.discover()
    head_base.head_names()
    encoder_base.register(ShapeEncoder)
    head_base.register(TinyHead)
    yield
    encoder_base.ENCODERS.pop("text/test-shape")
    head_base.HEADS.pop("test-tiny")


def test_a_head_and_an_encoder_defined_in_a_test_run_through_the_cli(tmp_path, registered) -> None:
    runner = CliRunner()

    def run(*args: str) -> dict:
        r = runner.invoke(app, [*args, "--json"])
        assert r.exit_code == 0, r.output
        return json.loads(r.output)

    store, ckpt = str(tmp_path / "store"), str(tmp_path / "ckpt")
    run("ingest", "csv", SAMPLE_CSV, "--out", store)
    listed = run("list")
    assert "test-tiny" in [h["name"] for h in listed["heads"]]
    assert {"modality": "text", "kind": "test-shape", "options": {"scale": 1.0}}.items() <= \
        next(e for e in listed["encoders"] if e.get("kind") == "test-shape").items()

    out = run("extract", "text", store, "--encoder", "test-shape", "-p", "scale=0.5")
    assert out["feature_set"] == "text/shape" and out["complete"] and out["encoder"] == "test-shape"
    from emostore.store import Store

    fs = Store.open(store).feature_set("text/shape")
    assert fs.config == {"encoder": "test-shape", "scale": 0.5}
    _, X, mask = fs.read()
    first = Store.open(store).table["text"].iat[0]
    assert X[0, 0] == 0.5 * len(first) and mask.all()

    r = runner.invoke(app, ["extract", "text", store, "--encoder", "test-shape", "-p", "window=3"])
    assert r.exit_code == 1 and "no encoder option 'window'" in r.output

    trained = run("train", store, "-f", "text/shape", "--head", "test-tiny", "-p", "hidden=4", "--epochs", "3",
                  "--out", ckpt)
    assert trained["head"] == "test-tiny" and trained["params"]["hidden"] == 4
    metrics = run("evaluate", ckpt, "--store", store)
    assert 0.0 <= metrics["weighted_f1"] <= 1.0 and len(metrics["confusion_matrix"]) == 7
    swept = run("sweep", store, "--heads", "test-tiny,linear", "-f", "text/shape", "--seeds", "1", "--epochs", "2")
    assert {r["head"] for r in swept["summary"]} == {"test-tiny", "linear"}
    # predict rebuilds the encoder from the configuration saved in the checkpoint
    pred = run("predict", ckpt, "--text", "What?! No way!")
    assert pred["head"] == "test-tiny" and pred["modalities"]["text/shape"]["present"]

    r = runner.invoke(app, ["train", store, "-f", "text/shape", "--head", "no-such", "--out", ckpt + "2"])
    assert r.exit_code == 2 and "choose from linear" in r.output
