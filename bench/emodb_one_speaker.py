"""Emo-DB trained on one speaker, tested on the other nine, with per-speaker z-scores (issue 17).

Each of the 10 speakers in turn is the only training speaker; the other 9 are the test split.
Rows: emostore's ``svm`` and ``mlp`` heads with ``--speaker-norm``; a plain scikit-learn
``LinearSVC`` on the same per-speaker z-scores (the reference); and the normalisation before
issue 17 (per-speaker z-scores, then a second standardisation on the training speaker), rebuilt
here with scikit-learn to show what it did. UAR (balanced accuracy) pooled over the 10 rounds.

    python bench/emodb_one_speaker.py [--write]
"""

from __future__ import annotations

import argparse
import time
from datetime import date
from pathlib import Path

import benchlib
import numpy as np
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from emostore.heads.data import load_data, speaker_normalise
from emostore.heads.train import TrainConfig, fit, predict_rows

SECTION = "## Emo-DB, one training speaker: speaker normalisation that cannot blow up (issue 17)"
FEATURES = ["audio/compare"]
C = 0.01


def old_normalisation(X: np.ndarray, speakers: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Before: per-speaker z-scores (a feature constant for a speaker left as X - mean), then a
    second standardisation with the training rows' statistics."""
    Z = X.copy()
    for who in set(speakers):
        rows = speakers == who
        std = X[rows].std(0)
        Z[rows] = (X[rows] - X[rows].mean(0)) / np.where(std < 1e-6, 1.0, std)
    scaler = StandardScaler().fit(Z[train])
    scaler.scale_ = np.where(scaler.var_ < 1e-12, 1.0, np.sqrt(scaler.var_))
    return scaler.transform(Z)


def run() -> dict[str, float]:
    store = benchlib.emodb_store(("egemaps", "compare"))
    speakers = store.table["speaker"].to_numpy()
    labels = store.table["emotion"].to_numpy()
    data = load_data(store, FEATURES, "emotion", speaker_norm=True)
    _, X, mask = store.feature_set(FEATURES[0]).read()
    truth: list[str] = []
    preds: dict[str, list[str]] = {k: [] for k in ("svm", "mlp", "plain LinearSVC", "before (second standardisation)")}
    worst = 0.0
    for who in sorted(set(speakers)):
        train, test = speakers == who, speakers != who
        data.split = np.where(train, "train", "test")
        truth += list(labels[test])
        for head, params, cfg in (("svm", {"C": str(C)}, TrainConfig(seed=0, device="cpu")),
                                  ("mlp", None, TrainConfig(seed=0, device="cpu", epochs=40))):
            fitted = fit(data, head, params, cfg)
            out = predict_rows(fitted.model, data, np.flatnonzero(test))
            preds[head] += [data.target.labels[i] for i in np.asarray(out).argmax(1)]
        Z = speaker_normalise(X, mask, speakers)
        ref = LinearSVC(C=C, max_iter=20000).fit(Z[train], labels[train])
        preds["plain LinearSVC"] += list(ref.predict(Z[test]))
        old = old_normalisation(X, speakers, train)
        worst = max(worst, float(np.abs(old[test]).max()))
        preds["before (second standardisation)"] += list(
            LinearSVC(C=C, max_iter=20000).fit(old[train], labels[train]).predict(old[test]))
    out = {k: balanced_accuracy_score(truth, v) for k, v in preds.items()}
    out["largest |z| before, test speakers"] = worst
    out["largest |z| now, test speakers"] = float(np.abs(data.xs[0].numpy()).max())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    r = run()
    load = Path("/proc/loadavg").read_text().split()[0]
    lines = [SECTION, "", f"Date {date.today().isoformat()}; {benchlib.machine()}, no GPU; load average {load} "
             f"(shared machine); {time.time() - t0:.0f} s. `python bench/emodb_one_speaker.py --write`.", "",
             "Each of the 10 speakers alone is the training split, the other 9 the test split; ComParE 2016 "
             f"(6,373) with per-speaker z-scores; linear SVMs at C = {C}; UAR pooled over the 10 rounds.", "",
             "| model | UAR |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in r.items() if not k.startswith("largest")]
    lines += ["", f"Largest |value| a test speaker's feature reached: {r['largest |z| before, test speakers']:,.0f} "
              f"before, {r['largest |z| now, test speakers']:.1f} now (per-speaker z-scores, no second "
              "standardisation; a feature nearly constant for a speaker is 0 for that speaker)."]
    text = "\n".join(lines)
    print(text)
    if args.write:
        benchlib.write_section(SECTION, text)


if __name__ == "__main__":
    main()
