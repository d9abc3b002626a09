"""``emostore finetune text`` on the sample: tiny BERT/RoBERTa/DistilBERT built offline, the
bundled MiniLM, reproducibility, a real kill -9 and resume, and every refused input."""

from __future__ import annotations

import hashlib
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
from conftest import SAMPLE
from safetensors.torch import load_file
from tiny_models import FAMILIES, build
from typer.testing import CliRunner

from emostore.cli import app
from emostore.errors import UserError
from emostore.extract.finetuned import ALIASES, load_transformer, resolve_source
from emostore.ingest.run import ingest

runner = CliRunner()
TINY = ("--epochs", "2", "--batch-size", "16", "--max-length", "64", "--device", "cpu", "--threads", "1", "--quiet")


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def files_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    st, _ = ingest("csv", [SAMPLE], tmp_path_factory.mktemp("ft") / "store", dataset="sample")
    return st.path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {f: build(f, root / f) for f in FAMILIES}


def offline(monkeypatch) -> None:
    """No network here either way; offline mode makes the hub fail at once instead of after retries."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def finetune_json(out: Path) -> dict:
    return json.loads((out / "finetune.json").read_text())


#: Each family also runs some of the training options.
OPTIONS = {"bert": (), "roberta": ("--class-weights",), "distilbert": ("--grad-accum", "2", "--label-smoothing", "0.1")}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_fine_tunes_from_a_local_folder(store, tiny, tmp_path, family):
    out = tmp_path / family
    r = run("finetune", "text", store, "--out", out, "--model", tiny[family], "--past", "1", "--future", "1",
            "--lr", "1e-3", *TINY, *OPTIONS[family], "--json")
    assert r.exit_code == 0, r.output
    meta = json.loads(r.stdout)
    assert meta == finetune_json(out)
    training = meta["training"]
    assert (training["class_weights"], training["grad_accum"], training["label_smoothing"]) == {
        "bert": (False, 1, 0.0), "roberta": (True, 1, 0.0), "distilbert": (False, 2, 0.1)}[family]
    assert meta["base_model"] == str(tiny[family].resolve())
    assert meta["input"] == {"format": "utterance-first-v1", "past": 1, "future": 1, "speaker": True,
                             "max_length": 64, "pooling": "utterance-mean"}
    assert [h["epoch"] for h in meta["history"]] == [1, 2] and meta["best_epoch"] in (1, 2)
    assert meta["labels"] == ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
    assert set(meta["history"][0]["dev"]) == {"weighted_f1", "accuracy", "macro_f1"}
    assert meta["test_metrics"]["n"] == 66 and meta["test_metrics"]["split"] == "test"
    assert meta["store"]["table_hash"] and meta["store"]["rows"] == {"train": 268, "dev": 51, "test": 66}
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(str(out)).model_type == family
    assert not (out / "training").exists()  # the training state is gone once the model is written


def test_aliases_name_the_three_families_and_fail_offline_in_one_line(monkeypatch):
    assert ALIASES == {"bert": "bert-base-uncased", "roberta": "roberta-base", "distilbert": "distilbert-base-uncased"}
    for alias, hub in ALIASES.items():
        assert resolve_source(alias) == (hub, hub)
    offline(monkeypatch)
    with pytest.raises(UserError, match="cannot load text model 'roberta' \\(roberta-base\\)") as err:
        load_transformer("roberta")
    assert "\n" not in str(err.value)


def test_same_seed_same_model_other_seed_another(store, tiny, tmp_path):
    outs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        r = run("finetune", "text", store, "--out", tmp_path / name, "--model", tiny["bert"], "--seed", seed,
                "--lr", "1e-3", *TINY)
        assert r.exit_code == 0, r.output
        outs[name] = load_file(str(tmp_path / name / "model.safetensors"))
    for key, value in outs["a"].items():
        assert np.array_equal(value.numpy(), outs["b"][key].numpy()), key
    assert any(not np.array_equal(v.numpy(), outs["c"][k].numpy()) for k, v in outs["a"].items())
    def scores(out: Path) -> list:
        return [(h["train_loss"], h["dev"]) for h in finetune_json(out)["history"]]

    assert scores(tmp_path / "a") == scores(tmp_path / "b")


def test_rerun_of_a_finished_run_says_so_and_trains_nothing(store, tiny, tmp_path):
    args = ["finetune", "text", store, "--out", tmp_path / "m", "--model", tiny["distilbert"], *TINY]
    assert run(*args).exit_code == 0
    before = files_digest(tmp_path / "m")
    r = runner.invoke(app, [str(a) for a in args if a != "--quiet"])
    assert r.exit_code == 0 and "already holds this fine-tuned model" in r.stderr
    assert files_digest(tmp_path / "m") == before


# ----- kill -9 and resume --------------------------------------------------------------------
def finetune_cmd(store: Path, out: Path, model: Path) -> list[str]:
    return [sys.executable, "-m", "emostore.cli", "finetune", "text", str(store), "--out", str(out), "--model",
            str(model), "--epochs", "3", "--batch-size", "4", "--lr", "1e-3", "--past", "2", "--max-length", "96",
            "--device", "cpu", "--threads", "1", "--save-every", "5", "--seed", "1"]


def saved_step(out: Path) -> int:
    try:
        return int(json.loads((out / "training" / "state.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError):
        return -1


@pytest.mark.slow
def test_kill_9_during_fine_tuning_then_resume(store, tiny, tmp_path):
    model = tiny["roberta"]
    ref = tmp_path / "reference"  # the uninterrupted run, in this process
    done = runner.invoke(app, finetune_cmd(store, ref, model)[3:])
    assert done.exit_code == 0, done.output
    steps_per_epoch = -(-268 // 4)
    victim = tmp_path / "victim"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # kill before anything is saved, after a few steps, and in the second epoch
    seen = []
    for target in (None, 10, steps_per_epoch + 20):
        proc = subprocess.Popen(finetune_cmd(store, victim, model), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        if target is None:
            time.sleep(1.0)
        else:
            while saved_step(victim) < target and proc.poll() is None and time.time() < deadline:
                time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        err = proc.communicate()[1]
        assert proc.returncode == -signal.SIGKILL, err
        seen.append(saved_step(victim))
    assert seen[1] >= 10 and seen[2] >= steps_per_epoch + 20, seen
    assert not (victim / "finetune.json").exists()
    finish = subprocess.run(finetune_cmd(store, victim, model), capture_output=True, text=True, timeout=600,
                            check=False)
    assert finish.returncode == 0, finish.stderr
    assert f"resuming from {victim / 'training'}: epoch 2 of 3" in finish.stderr
    # the resumed run ends exactly where the uninterrupted one did
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(victim / "model.safetensors"))
    for key in a:
        assert np.array_equal(a[key].numpy(), b[key].numpy()), key
    ma, mb = finetune_json(ref), finetune_json(victim)
    assert [h["dev"] for h in ma["history"]] == [h["dev"] for h in mb["history"]]
    assert ma["test_metrics"]["weighted_f1"] == mb["test_metrics"]["weighted_f1"]


# ----- bad input: one line, nothing overwritten -------------------------------------------------
def one_line_error(r, *needles: str) -> None:
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output, r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def relabelled_store(tmp_path: Path, name: str, change) -> Path:
    t = pd.read_csv(SAMPLE)
    change(t)
    csv = tmp_path / f"{name}.csv"
    t.to_csv(csv, index=False)
    st, _ = ingest("csv", [csv], tmp_path / name, dataset=name)
    return st.path


def test_bad_inputs_are_one_line_and_overwrite_nothing(store, tiny, tmp_path, monkeypatch):
    model = tiny["bert"]
    existing = tmp_path / "existing"
    assert run("finetune", "text", store, "--out", existing, "--model", model, *TINY).exit_code == 0
    before = files_digest(existing)

    def no_labels(t: pd.DataFrame) -> None:
        t.loc[t["split"] == "train", "emotion"] = None

    def one_class(t: pd.DataFrame) -> None:
        t.loc[t["split"] == "train", "emotion"] = "joy"

    r = run("finetune", "text", relabelled_store(tmp_path, "nolabels", no_labels), "--out", existing,
            "--model", model, *TINY)
    one_line_error(r, "no 'emotion' labels", "train split")
    r = run("finetune", "text", relabelled_store(tmp_path, "oneclass", one_class), "--out", existing,
            "--model", model, *TINY)
    one_line_error(r, "1 distinct 'emotion' labels")
    offline(monkeypatch)
    r = run("finetune", "text", store, "--out", existing, "--model", "no-such-org/no-such-model", *TINY)
    one_line_error(r, "cannot load text model 'no-such-org/no-such-model'")
    r = run("finetune", "text", store, "--out", existing, "--model", model, *TINY, "--max-length", "12",
            "--past", "3")
    one_line_error(r, "--past 3 --future 0 leaves no room for the utterance", "--max-length 12")
    r = run("finetune", "text", store, "--out", existing, "--model", model, *TINY, "--lr", "1e-3")
    one_line_error(r, f"--out {existing} holds another run", "lr")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    r = run("finetune", "text", store, "--out", other, "--model", model, *TINY)
    one_line_error(r, "holds something other than a fine-tuned model")
    assert files_digest(existing) == before and (other / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_wide_batches_are_computed_in_parts_that_cover_them_once():
    from emostore.finetune.train import token_parts

    lengths = np.array([5, 40, 12, 33, 7, 90, 3, 64])
    rows = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    parts = token_parts(rows, lengths, 128)
    assert sorted(np.concatenate(parts).tolist()) == rows.tolist()
    assert all(len(p) == 1 or len(p) * lengths[p].max() <= 128 for p in parts) and len(parts) > 1
    assert [p.tolist() for p in token_parts(rows, lengths, 0)] == [rows.tolist()]
    assert [p.tolist() for p in token_parts(rows, lengths, 10_000)] == [rows.tolist()]


def test_fine_tuning_with_batches_in_parts_trains(store, tiny, tmp_path):
    r = run("finetune", "text", store, "--out", tmp_path / "m", "--model", tiny["bert"], "--past", "2",
            "--max-batch-tokens", "64", *TINY, "--lr", "1e-3", "--json")
    assert r.exit_code == 0, r.output
    losses = [h["train_loss"] for h in json.loads(r.stdout)["history"]]
    assert np.isfinite(losses).all() and losses[1] < losses[0]


def test_an_interrupted_run_says_its_checkpoint_is_kept_and_the_same_command_resumes(store, tiny, tmp_path,
                                                                                      monkeypatch):
    from emostore.finetune.train import Trainer

    out = tmp_path / "interrupted"
    args = ("finetune", "text", store, "--out", out, "--model", tiny["bert"], *TINY)
    epoch = Trainer.train_epoch

    def interrupted_in_epoch_2(self, save_every, on_batch):
        if self.counters["epoch"] == 1:
            raise KeyboardInterrupt
        return epoch(self, save_every, on_batch)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted_in_epoch_2)
    r = run(*args)
    assert r.exit_code == 130 and r.stderr.strip().splitlines() == [
        "interrupted: the checkpoint of the last saved step is kept in --out; run the same command again to resume"]
    assert "chunks" not in r.output
    assert (out / "training" / "state.json").is_file()
    trained = []

    def counted(self, save_every, on_batch):
        trained.append(self.counters["epoch"] + 1)
        return epoch(self, save_every, on_batch)

    monkeypatch.setattr(Trainer, "train_epoch", counted)
    r = run(*args[:-1], "--json")  # the same command (logging, to show where it resumes)
    assert r.exit_code == 0, r.output
    assert "resuming from" in r.stderr and "epoch 2 of 2" in r.stderr
    assert trained == [2] and [h["epoch"] for h in json.loads(r.stdout)["history"]] == [1, 2]
