"""Emo-DB leave-one-speaker-out: frame-sequence heads, SVMs and their fusion (issue 10).

Each of the 10 speakers in turn is the test speaker. Heads trained by gradient descent use the
next speaker as dev split (early stopping) and the other 8 as training speakers; the
scikit-learn heads train on all 9 other speakers (they need no dev split) and choose ``C``
(when given a grid) by leave-one-speaker-out cross-validation among those 9. Standardisation
statistics come from the training speakers; per-speaker z-scores (``--speaker-norm``) use each
speaker's own utterances without labels. Nothing is tuned on the test speaker. UAR =
unweighted average recall over the 7 emotions, pooled over the 10 folds.

    python bench/emodb_loso.py RUN [RUN ...]        # named runs (see RUNS), or "all"
    python bench/emodb_loso.py all --write          # the BENCHMARKS.md section

Per-fold test probabilities are kept in bench/out/emodb_loso/<run>.npz for late fusion.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import benchlib
import numpy as np
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from emostore.heads.base import head_class
from emostore.heads.data import load_data
from emostore.heads.train import TrainConfig, fit, predict_rows

ROOT = benchlib.ROOT
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "bench" / "out"
PROBS = OUT / "emodb_loso"
FEATURE_SETS = ("egemaps", "compare", "egemaps-lld")
TITLE = "## Emo-DB, leave one speaker out: SVMs, sequence heads and fusion (issue 10)"
TARGET = 0.85


@dataclass
class Run:
    label: str
    features: list[str]
    head: str
    params: dict[str, Any] = field(default_factory=dict)
    speaker_norm: bool = True
    train: dict[str, Any] = field(default_factory=dict)
    #: Late fusion: average the test probabilities of these runs instead of training.
    fuse: list[str] = field(default_factory=list)


C_GRID = "0.0001;0.0003;0.001;0.003;0.01;0.03;0.1"
EG_GRID = "0.001;0.003;0.01;0.03;0.1;0.3;1"
SEQ = {"batch_size": 32, "epochs": 80, "patience": 15}
RUNS = {r.label: r for r in [
    Run("svm-egemaps", ["audio/egemaps"], "svm", {"C_grid": EG_GRID}, False),
    Run("svm-egemaps-spk", ["audio/egemaps"], "svm", {"C_grid": EG_GRID}),
    Run("svm-compare", ["audio/compare"], "svm", {"C_grid": C_GRID}, False),
    Run("svm-compare-spk", ["audio/compare"], "svm", {"C_grid": C_GRID}),
    Run("svm-compare-spk-cw", ["audio/compare"], "svm", {"C_grid": C_GRID}, True, {"class_weights": True}),
    Run("svm-rbf-compare-spk", ["audio/compare"], "svm", {"kernel": "rbf", "C_grid": "1;3;10;30;100"}),
    Run("svm-egemaps+compare-spk", ["audio/egemaps", "audio/compare"], "svm", {"C_grid": C_GRID}),
    Run("svm-egemaps+compare-spk-cw", ["audio/egemaps", "audio/compare"], "svm", {"C_grid": C_GRID}, True,
        {"class_weights": True}),
    Run("svm-all-spk-cw", ["audio/egemaps", "audio/compare", "audio/egemaps-lld"], "svm", {"C_grid": C_GRID}, True,
        {"class_weights": True}),
    Run("logreg-compare-spk", ["audio/compare"], "logreg", {"C_grid": C_GRID}),
    Run("seq-lld-spk", ["audio/egemaps-lld"], "sequence", {}, True, SEQ),
    Run("seq-lld-spk-h64-crop150", ["audio/egemaps-lld"], "sequence", {"hidden": 64, "max_frames": 150}, True, SEQ),
    Run("seq-lld-spk-transformer", ["audio/egemaps-lld"], "sequence", {"encoder": "transformer"}, True, SEQ),
    Run("seq-lld+compare-spk", ["audio/egemaps-lld", "audio/compare"], "sequence", {}, True, SEQ),
    Run("late-svm+seq", [], "", fuse=["svm-egemaps+compare-spk", "seq-lld+compare-spk"]),
]}
NOTES = [
    ("- `sequence` runs: the head's defaults (hidden 128, two convolutions of kernel 5 and stride 3, a "
    "bidirectional GRU, attention pooling, `max_frames` 1000, fusion `mlp`), batches of 32 utterances, at most "
    "80 epochs, patience 15, seed 0. `dev UAR` is pooled over the dev speakers, on which early stopping chose "
    "the epoch, so it is optimistic. Their seconds per fold were measured while other jobs kept the 2-core "
    "machine at a load average of 13 to 22; see the timing below for one fold."),
    ("- `late-svm+seq`: equal weights fixed beforehand. The SVM's softmax is taken over its one-vs-rest scores "
    "(votes plus a confidence below 1/3), so it is nearly one-hot and the sequence head only changes near ties."),
    ("- The plain speaker-normalised linear SVM on ComParE is 0.819 here with C chosen among the training "
    "speakers, 0.821 with C fixed at 0.001 beforehand (variants below)."),
]
#: The runs of the BENCHMARKS.md table (``all``), in its order.
TABLE = ["svm-egemaps", "svm-egemaps-spk", "svm-compare", "svm-compare-spk", "svm-compare-spk-cw",
         "svm-rbf-compare-spk", "svm-egemaps+compare-spk", "svm-egemaps+compare-spk-cw", "svm-all-spk-cw",
         "seq-lld-spk", "seq-lld-spk-h64-crop150", "seq-lld-spk-transformer", "seq-lld+compare-spk", "late-svm+seq"]


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def loso(store, run: Run, seed: int = 0, only: list[str] | None = None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    speakers = store.table["speaker"].to_numpy()
    order = sorted(set(speakers))
    classical = not head_class(run.head).trainable
    frames = head_class(run.head).frames
    truth, probs, rows_all, seconds, epochs = [], [], [], [], []
    dev_truth, dev_pred = [], []
    labels = None
    for i, test in enumerate(order):
        if only and test not in only:
            continue
        dev = order[(i + 1) % len(order)]
        split = np.where(speakers == test, "test", np.where((speakers == dev) & (not classical), "dev", "train"))
        data = load_data(store, run.features, "emotion", speaker_norm=run.speaker_norm, frames=frames, split=split)
        labels = data.target.labels
        cfg = TrainConfig(device="cpu", seed=seed, **run.train)
        t = time.perf_counter()
        result = fit(data, run.head, dict(run.params), cfg)
        seconds.append(time.perf_counter() - t)
        epochs.append(result.epochs_run)
        if not classical:  # the dev speaker (early stopping): its scores choose between configurations
            dev = data.rows("dev")
            dev_pred.append(predict_rows(result.model, data, dev).argmax(1).numpy())
            dev_truth.append(data.y.numpy()[dev])
        rows = data.rows("test")
        out = predict_rows(result.model, data, rows).double().numpy()
        probs.append(softmax(out))
        truth.append(data.y.numpy()[rows])
        rows_all.append(rows)
        print(f"  {run.label} fold {test}: UAR {balanced_accuracy_score(truth[-1], out.argmax(1)):.3f} "
              f"({seconds[-1]:.1f} s, {result.epochs_run} epochs, params {result.params})", flush=True)
    y, p, r = np.concatenate(truth), np.concatenate(probs), np.concatenate(rows_all)
    if not only:
        PROBS.mkdir(parents=True, exist_ok=True)
        np.savez(PROBS / f"{run.label}.npz", y=y, p=p, rows=r)
    dev_uar = (float(balanced_accuracy_score(np.concatenate(dev_truth), np.concatenate(dev_pred)))
               if dev_truth else None)
    return {"uar": float(balanced_accuracy_score(y, p.argmax(1))), "acc": float(accuracy_score(y, p.argmax(1))),
            "dev_uar": dev_uar, "seconds_per_fold": float(np.mean(seconds)), "epochs": float(np.mean(epochs)),
            "labels": labels}


def late(run: Run) -> dict[str, Any]:
    parts = [np.load(PROBS / f"{name}.npz") for name in run.fuse]
    order = np.argsort(parts[0]["rows"])
    y = parts[0]["y"][order]
    p = np.zeros_like(parts[0]["p"])
    for part in parts:
        o = np.argsort(part["rows"])
        assert np.array_equal(part["y"][o], y)
        p += part["p"][o] / len(parts)
    return {"uar": float(balanced_accuracy_score(y, p.argmax(1))), "acc": float(accuracy_score(y, p.argmax(1))),
            "seconds_per_fold": None, "epochs": None}


def describe(run: Run) -> tuple[str, str, str]:
    """(features, per-speaker z-score, head) columns of a run's table row."""
    if run.fuse:
        return " + ".join(RUNS[n].label for n in run.fuse), "yes", "late fusion: mean of the two softmaxes"
    params = ", ".join(f"{k}={v}" for k, v in {**run.params, **run.train}.items() if k not in SEQ or SEQ[k] != v)
    return ", ".join(run.features), "yes" if run.speaker_norm else "no", run.head + (f" ({params})" if params else "")


def section(results: dict[str, dict[str, Any]], load: tuple[str, str]) -> str:
    best = max(results, key=lambda n: results[n]["uar"])
    lines = [TITLE, "",
             (f"Date {date.today().isoformat()}; machine: {benchlib.machine()}, no GPU, shared with other jobs "
             f"(load average {load[0]} when this table was written; the runs ran at 10 to 22). "
             "`python bench/emodb_loso.py all --write`."), "",
             __doc__.split("\n\n")[1].replace("\n", " "), "",
             (f"Target: pooled UAR >= {TARGET} (the plain speaker-normalised linear SVM on ComParE reached 0.83 on "
             "these files)."), "",
             "| run | features | per-speaker z-score | head | UAR | accuracy | dev UAR | seconds per fold |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        feats, norm, head = describe(RUNS[name])
        dev = "" if r.get("dev_uar") is None else f"{r['dev_uar']:.3f}"
        secs = "" if r.get("seconds_per_fold") is None else f"{r['seconds_per_fold']:.1f}"
        lines.append(f"| {name} | {feats} | {norm} | {head} | {r['uar']:.3f} | {r['acc']:.3f} | {dev} | {secs} |")
    met = results[best]["uar"] >= TARGET
    lines += ["", (f"- Best: **{best}, UAR {results[best]['uar']:.3f}**: target {TARGET} "
              f"{'met' if met else 'missed'}."), *NOTES]
    timing = PROBS / "timing.json"
    if timing.exists():
        lines += ["- One fold of the sequence head timed alone (`python bench/emodb_loso.py RUN --folds 03`; "
                  "the machine still shared): " + "; ".join(json.loads(timing.read_text()).values()) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="names from RUNS, or all")
    ap.add_argument("--reuse", action="store_true", help="take the results of runs already made from bench/out")
    ap.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    ap.add_argument("--folds", help="only these test speakers, comma-separated (to time a fold; nothing is saved)")
    args = ap.parse_args()
    if args.folds:
        torch.set_num_threads(1)
        store = benchlib.emodb_store(FEATURE_SETS)
        for name in args.runs:
            load = Path("/proc/loadavg").read_text().split()[0]
            r = loso(store, RUNS[name], only=args.folds.split(","))
            line = (f"{name}, test speaker {args.folds}: {r['seconds_per_fold']:.1f} s per fold, {r['epochs']:.0f} "
                    f"epochs (load average {load} before, {Path('/proc/loadavg').read_text().split()[0]} after)")
            print(line)
            timing = PROBS / "timing.json"
            done = json.loads(timing.read_text()) if timing.exists() else {}
            timing.write_text(json.dumps({**done, name: line}))
        return
    torch.set_num_threads(1)
    names = TABLE if args.runs == ["all"] else args.runs
    load_before = Path("/proc/loadavg").read_text().split()[0]
    store = benchlib.emodb_store(FEATURE_SETS)
    results = {}
    for name in names:
        saved = PROBS / f"{name}.json"
        if args.reuse and saved.exists():
            results[name] = json.loads(saved.read_text())
            continue
        run = RUNS[name]
        results[name] = late(run) if run.fuse else loso(store, run)
        PROBS.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(results[name]))
        print(json.dumps({name: results[name]}), flush=True)
    text = section(results, (load_before, Path("/proc/loadavg").read_text().split()[0]))
    print(text)
    if args.write:
        benchlib.write_section(TITLE, text)


if __name__ == "__main__":
    main()
