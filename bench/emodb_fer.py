"""Emo-DB leave-one-speaker-out UAR (eGeMAPS, ComParE; with and without per-speaker z-scores) and
FER2013 test accuracy from face features. Writes a section of BENCHMARKS.md with ``--write``.

    python bench/emodb_fer.py [--fer-store bench/out/fer2013] [--write]
"""

from __future__ import annotations

import argparse
import time
from datetime import date
from pathlib import Path

import benchlib
import numpy as np
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from emostore.heads.data import load_data
from emostore.heads.train import TrainConfig, fit, predict_rows

ROOT = benchlib.ROOT
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "bench" / "out"


def loso(store, features: list[str], head: str, speaker_norm: bool, seed: int = 0) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Each speaker in turn is the test split, the next one dev (early stopping), the rest train."""
    data = load_data(store, features, "emotion", speaker_norm=speaker_norm)
    speakers = store.table["speaker"].to_numpy()
    order = sorted(set(speakers))
    truth, pred = [], []
    for i, test in enumerate(order):
        dev = order[(i + 1) % len(order)]
        data.split = np.where(speakers == test, "test", np.where(speakers == dev, "dev", "train"))
        # statistics of the training speakers only, as load_data would compute for this split
        train = data.split == "train"
        for m, x in enumerate(data.xs):
            valid = data.mask[:, m].numpy() & train
            mean, std = x[valid].mean(0), x[valid].std(0).clamp(min=1e-6)
            data.xs[m] = torch.where(data.mask[:, m:m + 1], (x - mean) / std, torch.zeros(()))
        result = fit(data, head, {}, TrainConfig(device="cpu", seed=seed, batch_size=32, epochs=150, patience=20))
        rows = data.rows("test")
        out = predict_rows(result.model, data, rows).argmax(1).numpy()
        truth.extend(data.y.numpy()[rows])
        pred.extend(out)
        data = load_data(store, features, "emotion", speaker_norm=speaker_norm)  # fresh tensors per fold
    return float(balanced_accuracy_score(truth, pred)), float(accuracy_score(truth, pred))


def fer(store_path: Path, features: list[str], seed: int = 0) -> dict[str, float]:
    from emostore.store import Store

    store = Store.open(store_path)
    data = load_data(store, features, "emotion")
    rng = np.random.default_rng(seed)
    dev = (data.split == "train") & (rng.random(len(data.split)) < 0.1)
    data.split = np.where(dev, "dev", data.split)
    t = time.perf_counter()
    result = fit(data, "mlp", {"hidden": 512}, TrainConfig(device="cpu", seed=seed, patience=6, epochs=40))
    seconds = time.perf_counter() - t
    rows = np.flatnonzero(data.split == "test")
    detected = data.mask.numpy()[rows].any(1)
    out = predict_rows(result.model, data, rows).argmax(1).numpy()
    y = data.y.numpy()[rows]
    return {"detected": float(detected.mean()), "acc_detected": float((out == y)[detected].mean()),
            "acc_all": float(((out == y) & detected).mean()), "n_test": len(rows), "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fer-store", type=Path, default=OUT / "fer2013")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    lines = ["## Emo-DB and FER2013 (issue 4)", "",
             f"Date {date.today().isoformat()}; machine: {benchlib.machine()}, no GPU.", "",
             "### Emo-DB, leave one speaker out (535 utterances, 10 speakers, 7 emotions)", "",
             "Each speaker in turn is the test split and the next one the dev split (early stopping, batches of 32, "
             "up to 150 epochs, patience 20); "
             "standardisation statistics come from the training speakers. Per-speaker z-scores use each "
             "speaker's own utterances (no labels). UAR = unweighted average recall over the 7 classes, "
             "pooled over the 10 folds; one seed.", "",
             "| features | per-speaker z-score | head | UAR | accuracy |", "|---|---|---|---|---|"]
    store = benchlib.emodb_store(("egemaps", "compare"))
    for fs in ("audio/egemaps", "audio/compare"):
        for norm in (False, True):
            for head in ("linear", "mlp"):
                uar, acc = loso(store, [fs], head, norm)
                lines.append(f"| {fs} | {'yes' if norm else 'no'} | {head} | {uar:.3f} | {acc:.3f} |")
                print(lines[-1], flush=True)
    if (args.fer_store / "zarr.json").exists():
        lines += ["", "### FER2013 test (7,024 images), face features from MediaPipe", "",
                  "An `mlp` (hidden 512) trained on the train split (10% held out as dev), one seed. Images "
                  "are upsampled to 192 px for the detector. Rows without a detected face count as wrong in "
                  "'all test images'. `visual/fer` comes from a CNN that was trained on FER2013 itself, so its "
                  "number is not a generalisation result.", "",
                  "| features | faces detected | accuracy on detected faces | accuracy over all test images | "
                  "training time |", "|---|---|---|---|---|"]
        for feats in (["visual/landmarks"], ["visual/fer"], ["visual/landmarks", "visual/fer"]):
            r = fer(args.fer_store, feats)
            lines.append(f"| {' + '.join(feats)} | {r['detected']:.3f} | {r['acc_detected']:.3f} | "
                         f"{r['acc_all']:.3f} | {r['seconds']:.0f} s |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        benchlib.write_section(lines[0], text)


if __name__ == "__main__":
    main()
