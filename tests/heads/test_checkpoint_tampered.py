"""Tampered checkpoints are refused when loaded, in one line, by predict, evaluate and serve (which
then does not start): missing keys, wrong dimensions, a truncated or inconsistent safetensors
file, a normalisation vector of the wrong length, a standard deviation of zero, weights that
are not finite. No answer is ever NaN."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from emostore.cli import app
from emostore.heads.data import load_data
from emostore.heads.train import TrainConfig, fit

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(sample_store, tmp_path_factory) -> Path:
    from emostore.heads import checkpoint

    data = load_data(sample_store, ["text/minilm"], "emotion")
    result = fit(data, "mlp", None, TrainConfig(epochs=2, device="cpu"))
    return checkpoint.save(result, data, tmp_path_factory.mktemp("ck") / "mlp", store=sample_store)


def edit_json(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        meta = json.loads((folder / "checkpoint.json").read_text())
        change(meta)
        (folder / "checkpoint.json").write_text(json.dumps(meta))
    return apply


def truncate(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def nan_weight(folder: Path) -> None:
    state = load_file(str(folder / "model.safetensors"))
    key = next(k for k, v in state.items() if v.ndim == 2)
    state[key] = state[key].clone()
    state[key][0, 0] = float("nan")
    save_file(state, str(folder / "model.safetensors"))


def other_shapes(folder: Path) -> None:
    state = load_file(str(folder / "model.safetensors"))
    key = next(k for k, v in state.items() if v.ndim == 2)
    state[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])
    save_file(state, str(folder / "model.safetensors"))


def _drop(key: str) -> Callable[[dict], None]:
    return lambda m: m.pop(key)


def _short_mean(m: dict) -> None:
    m["normalisation"]["text/minilm"]["mean"] = m["normalisation"]["text/minilm"]["mean"][:-1]


def _zero_std(m: dict) -> None:
    s = m["normalisation"]["text/minilm"]
    s["std"] = [0.0] * len(s["std"])


def _dim(m: dict) -> None:
    m["feature_sets"][0]["dim"] = 383


TAMPERS: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing target": (edit_json(_drop("target")), "'target' is missing"),
    "missing normalisation": (edit_json(_drop("normalisation")), "'normalisation' is missing"),
    "wrong dim": (edit_json(_dim), "normalisation 'mean' has 384 values, the feature set 383"),
    "short mean": (edit_json(_short_mean), "normalisation 'mean' has 383 values, the feature set 384"),
    "zero std": (edit_json(_zero_std), "a standard deviation must be above 0"),
    "truncated weights": (truncate, "model.safetensors: cannot be read"),
    "other shapes": (other_shapes, "the weights do not fit the head"),
    "nan weights": (nan_weight, "not finite"),
    "bad json": (lambda f: (f / "checkpoint.json").write_text("{ not json"), "not valid JSON"),
}


@pytest.mark.parametrize("case", list(TAMPERS))
def test_a_tampered_checkpoint_is_refused_in_one_line(trained, sample_store, tmp_path, case):
    folder = tmp_path / "ckpt"
    shutil.copytree(trained, folder)
    tamper, needle = TAMPERS[case]
    tamper(folder)
    for args in (["predict", folder, "--text", "I can't believe it!", "--json"],
                 ["evaluate", folder, "--store", sample_store.path],
                 ["serve", folder, "--port", "1"]):  # serve refuses before binding any port
        r = runner.invoke(app, [str(a) for a in args])
        assert r.exit_code == 1, (args[0], r.output)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.output, (args[0], r.stderr)


def test_an_untouched_checkpoint_answers_with_finite_probabilities(trained):
    r = runner.invoke(app, ["predict", str(trained), "--text", "I can't believe it!", "--json"])
    assert r.exit_code == 0, r.output
    probs = json.loads(r.stdout)["probabilities"]
    assert abs(sum(probs.values()) - 1) < 1e-3 and all(0 <= p <= 1 for p in probs.values())
