"""Stores and checkpoints written before (emostore 0.1, tests/data/v0.1) still load: read,
verified (saying their chunks carry no checksums), trained on, evaluated, predicted with, and
their feature set resumed with its recorded precision."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from emostore.cli import app
from emostore.store import Store

OLD = Path(__file__).resolve().parents[1] / "data" / "v0.1"
runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def old(tmp_path) -> Path:
    shutil.copytree(OLD, tmp_path / "v0.1")
    return tmp_path / "v0.1"


def test_an_old_store_reads_verifies_and_resumes(old):
    st = Store.open(old / "store", mode="r")
    fs = st.feature_set("text/minilm")
    ids, X, mask = fs.read()
    assert len(ids) == 67 and mask.all() and np.isfinite(X).all() and not fs.checked
    assert fs.config["precision"] == "float32"
    r = run("verify", old / "store", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["ok"] and any("written before chunk checksums" in n for n in report["notes"])
    # its recorded precision resumes it (nothing to do); bfloat16 would be another configuration
    r = run("extract", "text", old / "store", "--device", "cpu", "--precision", "float32", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["rows_run"] == 0, r.output
    before = fs.read()[1]
    np.testing.assert_array_equal(Store.open(old / "store", mode="r").read("text/minilm")[1], before)


def test_an_old_checkpoint_evaluates_predicts_and_a_new_head_trains(old, tmp_path):
    r = run("evaluate", old / "ckpt", "--store", old / "store", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n"] == 13
    r = run("predict", old / "ckpt", "--text", "I can't believe you did that!", "--json")
    assert r.exit_code == 0, r.output
    probs = json.loads(r.stdout)["probabilities"]
    assert abs(sum(probs.values()) - 1) < 1e-3
    r = run("train", old / "store", "--features", "text/minilm", "--out", tmp_path / "new", "--epochs", "2",
            "--device", "cpu", "--quiet")
    assert r.exit_code == 0, r.output
