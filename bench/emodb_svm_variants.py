"""Emo-DB leave-one-speaker-out: variants of the linear SVM on openSMILE functionals (issue 10).

What a speech-emotion researcher tries to get past a plain speaker-normalised SVM, each with the
same protocol as ``bench/emodb_loso.py`` (10 folds, one per test speaker; statistics from the 9
training speakers; C chosen by leave-one-speaker-out cross-validation among them, or fixed
beforehand where the row says so; nothing is tuned on the test speaker). Plain scikit-learn on
the store's arrays, so that many variants run in minutes. Prints one line per variant (pooled
UAR) and, with ``--write``, writes them as a section of BENCHMARKS.md.

    python bench/emodb_svm_variants.py [--write]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import benchlib
import numpy as np
from sklearn.feature_selection import f_classif
from sklearn.metrics import balanced_accuracy_score
from sklearn.svm import SVC

from emostore.store import Store

ROOT = benchlib.ROOT
STORE = ROOT / "bench" / "out" / "emodb"
EMOBASE = ROOT / "bench" / "out" / "emodb_emobase.npy"
GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1)
WIDE = (1e-3, 1e-2, 0.1, 0.3, 1, 3, 10, 30, 100)
TITLE = "## Emo-DB, leave one speaker out: variants of the linear SVM (issue 10)"


class Data:
    def __init__(self, store: Store):
        table = store.table
        self.spk = table["speaker"].to_numpy()
        labels = sorted(set(table["emotion"]))
        self.y = np.array([labels.index(v) for v in table["emotion"]])
        self.speakers = sorted(set(self.spk))
        self.F = {n: store.feature_set(f"audio/{n}").read()[1].astype(np.float64)
                  for n in ("egemaps", "compare", "egemaps-lld")}
        if not EMOBASE.exists():
            np.save(EMOBASE, emobase(table["media"].tolist()))
        self.F["emobase"] = np.load(EMOBASE)


def emobase(files: list[str]) -> np.ndarray:
    """openSMILE's emobase functionals (988) of each file, at 16 kHz."""
    import opensmile

    from emostore.extract.audio_io import load_audio

    smile = opensmile.Smile(opensmile.FeatureSet.emobase, opensmile.FeatureLevel.Functionals)
    return np.stack([smile.process_signal(np.clip(load_audio(f, 16000), -1, 32767 / 32768), 16000).to_numpy()[0]
                     for f in files]).astype(np.float64)


def per_speaker(d: Data, X: np.ndarray, how: str) -> np.ndarray:
    """z: z-score per speaker; center: subtract each speaker's mean; robust: median and IQR; none."""
    X = X.copy()
    for s in d.speakers:
        r = d.spk == s
        if how == "z":
            sd = X[r].std(0)
            X[r] = (X[r] - X[r].mean(0)) / np.where(sd < 1e-8, 1, sd)
        elif how == "center":
            X[r] = X[r] - X[r].mean(0)
        elif how == "robust":
            q = np.subtract(*np.percentile(X[r], [75, 25], 0))
            X[r] = (X[r] - np.median(X[r], 0)) / np.where(q < 1e-8, 1, q)
    return X


def standardise(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sd = a.std(0)
    sd = np.where(sd < 1e-8, 1, sd)
    return (a - a.mean(0)) / sd, (b - a.mean(0)) / sd


def choose_C(K: np.ndarray, y: np.ndarray, spk: np.ndarray, grid: tuple[float, ...]) -> float:
    """C with the best pooled UAR over leave-one-speaker-out folds of the training speakers."""
    scores = []
    for C in grid:
        truth, pred = [], []
        for s in sorted(set(spk)):
            a, b = spk != s, spk == s
            pred.append(SVC(kernel="precomputed", C=C).fit(K[np.ix_(a, a)], y[a]).predict(K[np.ix_(b, a)]))
            truth.append(y[b])
        scores.append(balanced_accuracy_score(np.concatenate(truth), np.concatenate(pred)))
    return grid[int(np.argmax(scores))]


Transform = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def loso(d: Data, blocks: list[str], how: str = "z", grid: tuple[float, ...] = GRID, fixed_C: float | None = None,
         transform: Transform | None = None, members: int = 1, self_train: bool = False) -> float:
    """Pooled UAR of a linear SVM over the 10 folds."""
    Xs = [per_speaker(d, d.F[b], how) for b in blocks]
    truth, pred = [], []
    for test in d.speakers:
        tr, te = d.spk != test, d.spk == test
        parts = [standardise(X[tr], X[te]) for X in Xs]
        Xtr, Xte = np.hstack([p[0] for p in parts]), np.hstack([p[1] for p in parts])
        if transform is not None:
            Xtr, Xte = transform(Xtr, Xte, d.y[tr])
        K, Kte = Xtr @ Xtr.T, Xte @ Xtr.T
        C = fixed_C or choose_C(K, d.y[tr], d.spk[tr], grid)
        if members > 1:  # votes of SVMs with C around the chosen one, instead of the one
            votes = sum(np.eye(7)[SVC(kernel="precomputed", C=C * f).fit(K, d.y[tr]).predict(Kte)]
                        for f in (1 / 3, 1, 3))
            pred.append(np.argmax(votes, 1))
        else:
            model = SVC(kernel="precomputed", C=C).fit(K, d.y[tr])
            p = model.predict(Kte)
            if self_train:  # add the test speaker's more confident half with its predicted labels (no truth)
                dec = np.sort(model.decision_function(Kte), 1)
                keep = (dec[:, -1] - dec[:, -2]) >= np.median(dec[:, -1] - dec[:, -2])
                Xa, ya = np.vstack([Xtr, Xte[keep]]), np.concatenate([d.y[tr], p[keep]])
                p = SVC(kernel="precomputed", C=C).fit(Xa @ Xa.T, ya).predict(Xte @ Xa.T)
            pred.append(p)
        truth.append(d.y[te])
    return float(balanced_accuracy_score(np.concatenate(truth), np.concatenate(pred)))


def l2(a: np.ndarray, b: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)


def kbest(k: int) -> Transform:
    def select(a: np.ndarray, b: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = np.argsort(-np.nan_to_num(f_classif(a, y)[0]))[:k]  # ANOVA F on the training speakers only
        return a[:, keep], b[:, keep]
    return select


def blocks_weighted(sizes: list[int]) -> Transform:
    def weigh(a: np.ndarray, b: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = np.concatenate([np.full(n, n ** -0.5) for n in sizes])
        return a * w, b * w
    return weigh


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    d = Data(Store.open(STORE, mode="r"))
    sizes = [d.F[n].shape[1] for n in ("egemaps", "compare", "egemaps-lld")]
    variants: list[tuple[str, Callable[[], float]]] = [
        ("ComParE, per-speaker z-score (reference)", lambda: loso(d, ["compare"])),
        ("ComParE, per-speaker centring only", lambda: loso(d, ["compare"], "center")),
        ("ComParE, per-speaker median/IQR", lambda: loso(d, ["compare"], "robust")),
        ("ComParE, z-score then each row L2-normalised", lambda: loso(d, ["compare"], transform=l2, grid=WIDE)),
        ("ComParE, fixed C = 0.001 (no selection)", lambda: loso(d, ["compare"], fixed_C=0.001)),
        ("ComParE, votes of C/3, C, 3C", lambda: loso(d, ["compare"], members=3)),
        ("ComParE, 2000 best features by ANOVA F on the training speakers, C = 0.001",
         lambda: loso(d, ["compare"], fixed_C=0.001, transform=kbest(2000))),
        ("ComParE, self-training on the test speaker's confident half (no labels)",
         lambda: loso(d, ["compare"], self_train=True)),
        ("eGeMAPS + ComParE", lambda: loso(d, ["egemaps", "compare"])),
        ("eGeMAPS + ComParE + LLD mean/std, each set weighted 1/sqrt(dim)",
         lambda: loso(d, ["egemaps", "compare", "egemaps-lld"], transform=blocks_weighted(sizes), grid=WIDE)),
        ("emobase (988)", lambda: loso(d, ["emobase"], grid=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3))),
        ("emobase + ComParE", lambda: loso(d, ["emobase", "compare"])),
        ("emobase + ComParE + eGeMAPS", lambda: loso(d, ["emobase", "compare", "egemaps"])),
    ]
    load = Path("/proc/loadavg").read_text().split()[0]
    lines = [TITLE, "", (f"`python bench/emodb_svm_variants.py` (load average {load} at the start): linear SVMs "
                         "(scikit-learn, precomputed kernel) on the store's arrays; C by leave-one-speaker-out "
                         "among the training speakers unless fixed beforehand."), "",
             "| variant | UAR |", "|---|---|"]
    for label, fn in variants:
        t = time.perf_counter()
        uar = fn()
        lines.append(f"| {label} | {uar:.3f} |")
        print(f"{uar:.4f}  {label}  ({time.perf_counter() - t:.0f} s)", flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        benchlib.write_section(TITLE, text)

if __name__ == "__main__":
    main()
