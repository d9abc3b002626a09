"""CMU-MOSI, text only: sentiment regression with every head on the standard test fold.

Uses the bundled all-MiniLM-L6-v2 features (``text/minilm``), extracted once into
``bench/out/mosi``; a video is a dialogue for the ``context`` head. Every head trains on the
standard train fold with early stopping on the validation fold's MAE (L1 loss) and is scored on
the test fold: MAE, Pearson correlation, Acc-2 (negative vs positive, zero truths left out, and
negative vs non-negative), F1 and Acc-7. Mean and sample standard deviation over ``--seeds``.

    python bench/heads_mosi.py [--seeds 5] [--threads 1] [--write]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from datetime import date

import numpy as np
import torch
from heads_common import OUT, SHARED, cached_store, machine, mean_std, write_subsection

from emostore.heads.data import load_data
from emostore.heads.sweep import sweep
from emostore.heads.train import TrainConfig

HEADS = ["linear", "mlp", "late", "gated", "attention", "context", "knn"]
CONFIG = TrainConfig(device="auto")
KEYS = ["mae", "corr", "acc2", "f1", "acc2_nonneg", "acc7"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadier on a shared machine)")
    ap.add_argument("--write", action="store_true", help="replace the MOSI part of the heads section of BENCHMARKS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    CONFIG.threads = args.threads

    store = cached_store("mosi", SHARED / "cmu_mosi", "mosi", (0,))
    data = load_data(store, ["text/minilm"], "sentiment")
    result = sweep(store, HEADS, [["text/minilm"]], seeds=args.seeds, target="sentiment", config=CONFIG)
    (OUT / "heads_mosi.json").write_text(json.dumps({"config": asdict(CONFIG), **result.to_dict()}, indent=2))
    y = data.y.numpy()
    constant = float(np.abs(y[data.rows("test")] - y[data.rows("train")].mean()).mean())
    lines = [
        f"Date {date.today().isoformat()}; machine: {machine()}; torch threads {args.threads}.",
        (f"`python bench/heads_mosi.py --seeds {args.seeds}`: CMU-MOSI text only (transcripts), standard folds "
        f"(train {len(data.rows('train'))} / valid {len(data.rows('dev'))} / test {len(data.rows('test'))} "
        f"segments). Training defaults of `emostore train`: L1 loss, AdamW lr {CONFIG.lr}, early stopping on dev MAE "
        f"(patience {CONFIG.patience}). Mean ± sample std over {args.seeds} seeds. Acc-2 and F1: negative vs "
        "positive (zero truths left out); Acc-2 ≥0: negative vs non-negative. Predicting the training mean "
        f"everywhere gives MAE {constant:.4f}."),
        "",
        "| head | MAE | corr | Acc-2 | F1 | Acc-2 ≥0 | Acc-7 | seconds per run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result.summary():
        runs = [r for r in result.runs if r["head"] == row["head"]]
        values = [mean_std([r["metrics"][k] for r in runs]) for k in KEYS]
        lines.append(f"| {row['head']} | " + " | ".join(values) + f" | {row['seconds']['mean']:.1f} |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_subsection("CMU-MOSI, text only", text)


if __name__ == "__main__":
    main()
