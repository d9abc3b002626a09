"""``finetune text --teacher``: a student with its own vocabulary learns from a teacher's soft
labels, reading the teacher's input format; refusals; kill -9 and resume."""

from __future__ import annotations

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
from tiny_models import build
from typer.testing import CliRunner

from emostore.cli import app
from emostore.extract.dialogue_input import DialogueFormat, TurnTokenizer
from emostore.extract.finetuned import load_transformer
from emostore.finetune.data import build_data, target_of
from emostore.finetune.model import load_classifier
from emostore.finetune.train import predict
from emostore.ingest.run import ingest
from emostore.store import Store

runner = CliRunner()
TINY = ("--epochs", "2", "--batch-size", "16", "--max-length", "64", "--device", "cpu", "--threads", "1", "--quiet",
        "--lr", "1e-3")


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """The sample store; a tiny BERT teacher fine-tuned with one past turn (WordPiece vocabulary) on
    the sample with neutral and joy swapped, so that what it teaches differs from the gold labels;
    a tiny RoBERTa student base (byte-level BPE: another vocabulary)."""
    root = tmp_path_factory.mktemp("distill")
    st, _ = ingest("csv", [SAMPLE], root / "store", dataset="sample")
    swapped = pd.read_csv(SAMPLE)
    swapped["emotion"] = swapped["emotion"].replace({"neutral": "joy", "joy": "neutral"})
    swapped.to_csv(root / "swapped.csv", index=False)
    other, _ = ingest("csv", [root / "swapped.csv"], root / "swapped", dataset="swapped")
    bert, roberta = build("bert", root / "bert"), build("roberta", root / "roberta", seed=1)
    teacher = root / "teacher"
    r = run("finetune", "text", other.path, "--out", teacher, "--model", bert, "--past", "1", *TINY,
            "--epochs", "4")
    assert r.exit_code == 0, r.output
    return {"store": st.path, "teacher": teacher, "student_base": roberta, "bert": bert}


def outputs_on_train(model_dir: Path, store: Path) -> np.ndarray:
    """A fine-tuned model's class predictions on the store's train rows, in its own input format."""
    meta = json.loads((model_dir / "finetune.json").read_text())
    st = Store.open(store, mode="r")
    tokenizer, backbone, _ = load_transformer(str(model_dir))
    tt = TurnTokenizer(tokenizer, int(meta["input"]["max_length"]))
    target = target_of(st, "emotion")
    data = build_data(st, target, DialogueFormat.from_dict(meta["input"]), tt)
    rows = data.rows("train")
    model = load_classifier(model_dir, backbone, target.n_out)
    return predict(model, data, tt, rows, device="cpu", precision="float32").argmax(1)


def test_student_reads_the_teachers_input_and_learns_its_soft_labels(setup, tmp_path):
    store, teacher, base = setup["store"], setup["teacher"], setup["student_base"]
    students = {}
    for weight in ("0", "1"):
        out = tmp_path / f"w{weight}"
        r = run("finetune", "text", store, "--out", out, "--model", base, "--teacher", teacher,
                "--distill-weight", weight, "--temperature", "2", *TINY, "--json")
        assert r.exit_code == 0, r.output
        students[weight] = json.loads(r.stdout)
    meta = students["1"]
    teacher_meta = json.loads((teacher / "finetune.json").read_text())
    assert meta["input"]["past"] == 1 and meta["input"]["future"] == 0  # the teacher's format, not the default
    assert meta["teacher"]["model_hash"] == teacher_meta["model_hash"]
    assert (meta["teacher"]["temperature"], meta["teacher"]["weight"]) == (2.0, 1.0)
    assert meta["base_model"] == str(base.resolve())
    # weight 0 is plain fine-tuning on the gold labels: the same weights as without a teacher
    plain = tmp_path / "plain"
    assert run("finetune", "text", store, "--out", plain, "--model", base, "--past", "1", *TINY).exit_code == 0
    a, b = load_file(str(plain / "model.safetensors")), load_file(str(tmp_path / "w0" / "model.safetensors"))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    # weight 1 learns the teacher: it agrees with the teacher on the train rows more than the gold-trained one
    taught = outputs_on_train(teacher, store)
    agree = {w: float((outputs_on_train(tmp_path / f"w{w}", store) == taught).mean()) for w in ("0", "1")}
    assert agree["1"] > agree["0"] + 0.2, agree


def test_refusals_are_one_line(setup, tmp_path):
    store, teacher, base = setup["store"], setup["teacher"], setup["student_base"]

    def one_line(r, needle: str) -> None:
        assert r.exit_code == 1, r.output
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], r.stderr

    one_line(run("finetune", "text", store, "--out", tmp_path / "a", "--model", base, "--teacher", teacher,
                 "--past", "2", *TINY), "--past 2: the student reads the teacher's input (--past 1")
    one_line(run("finetune", "text", store, "--out", tmp_path / "b", "--model", base, "--teacher", setup["bert"],
                 *TINY), "not a fine-tuned model folder")
    one_line(run("finetune", "text", store, "--out", tmp_path / "c", "--model", base, "--teacher", teacher,
                 "--target", "sentiment", *TINY), "was trained for 'emotion'")
    assert not any((tmp_path / n / "finetune.json").exists() for n in "abc")


def student_cmd(setup: dict[str, Path], out: Path) -> list[str]:
    return [sys.executable, "-m", "emostore.cli", "finetune", "text", str(setup["store"]), "--out", str(out),
            "--model", str(setup["student_base"]), "--teacher", str(setup["teacher"]), "--epochs", "2",
            "--batch-size", "4", "--lr", "1e-3", "--max-length", "64", "--device", "cpu", "--threads", "1",
            "--precision", "bfloat16", "--save-every", "5", "--seed", "2"]


@pytest.mark.slow
def test_kill_9_during_distillation_then_resume(setup, tmp_path):
    """Killed after the teacher's outputs and some steps are saved, the student resumes (without
    running the teacher again) and ends with the weights of an uninterrupted run (bfloat16)."""
    ref = tmp_path / "ref"
    done = runner.invoke(app, student_cmd(setup, ref)[3:])
    assert done.exit_code == 0, done.output
    victim = tmp_path / "victim"
    proc = subprocess.Popen(student_cmd(setup, victim), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = victim / "training" / "state.json"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        try:
            if int(json.loads(state.read_text())["global_step"]) >= 30:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL and (victim / "training" / "teacher-outputs.npz").is_file()
    finish = subprocess.run(student_cmd(setup, victim), capture_output=True, text=True, timeout=600, check=False)
    assert finish.returncode == 0, finish.stderr
    assert "resuming from" in finish.stderr and "the teacher" not in finish.stderr, finish.stderr  # outputs kept
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(victim / "model.safetensors"))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    ma, mb = (json.loads((d / "finetune.json").read_text()) for d in (ref, victim))
    assert ma["training"]["precision"] == "bfloat16" and ma["history"] == [
        {**h, "train_seconds": ma["history"][i]["train_seconds"],
         "train_cpu_seconds": ma["history"][i]["train_cpu_seconds"]} for i, h in enumerate(mb["history"])]
