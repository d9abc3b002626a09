"""MELD, text only: test weighted F1 of every head over several seeds, and training times.

Uses the bundled all-MiniLM-L6-v2 features (``text/minilm``) and the 2-turn context feature
set (``text/minilm-ctx2``), extracted once into ``bench/out/meld``. Every head trains on the
train split with early stopping on dev weighted F1 and is scored on test; the table gives mean
and sample standard deviation over ``--seeds`` seeds. A logistic regression on the same frozen
embeddings is the reference. Wall times: one ``mlp`` run, one ``context`` run and a
3-head x N-seed sweep (mlp, gated, context), each started on a quiet machine (see
``--max-busy``), with what other processes used meanwhile.

    python bench/heads_meld.py [--seeds 5] [--threads 1] [--write]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from datetime import date

import numpy as np
import torch
from heads_common import OUT, SHARED, cached_store, machine, mean_std, timed, wait_quiet, write_subsection
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from emostore.heads.data import load_data
from emostore.heads.sweep import sweep
from emostore.heads.train import TrainConfig, fit

MINILM, CTX2 = "text/minilm", "text/minilm-ctx2"
#: The training configuration of every run: the CLI's defaults.
CONFIG = TrainConfig(device="auto")
#: A variant tried for the context head: an average of the weights and label smoothing.
VARIANT = {"ema": ["0.99"], "label_smoothing": ["0.1"]}
ORDER = ["linear", "mlp", "late", "gated", "attention", "context", "knn"]


def logistic_reference(store) -> float:
    """Logistic regression (scikit-learn defaults, max_iter 2000) on the raw MiniLM vectors."""
    _, X, mask = store.feature_set(MINILM).read()
    t = store.table
    train, test = (t["split"] == "train").to_numpy() & mask, (t["split"] == "test").to_numpy() & mask
    clf = LogisticRegression(max_iter=2000).fit(X[train], t.loc[train, "emotion"])
    return float(f1_score(t.loc[test, "emotion"], clf.predict(X[test]), average="weighted"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadier on a shared machine)")
    ap.add_argument("--max-busy", type=float, default=0.5, help="cores others may use before a timed run starts")
    ap.add_argument("--patience", type=float, default=300, help="seconds to wait for a quiet machine")
    ap.add_argument("--write", action="store_true", help="replace the MELD part of the heads section of BENCHMARKS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    CONFIG.threads = args.threads

    store = cached_store("meld", SHARED / "meld", "meld", (0, 2))
    reference = logistic_reference(store)
    print(f"logistic regression on frozen MiniLM: test weighted F1 {reference:.4f}", flush=True)

    timings = {}
    data = load_data(store, [MINILM], "emotion")
    for head in ("mlp", "context"):
        before = wait_quiet(args.max_busy, args.patience)
        result, wall, others = timed(lambda h=head: fit(data, h, config=replace(CONFIG, seed=0)))
        timings[head] = (wall, before, others, result.epochs_run)
        print(f"one {head} run: {wall:.1f} s, {result.epochs_run} epochs (others {before:.2f}/{others:.2f} cores)",
              flush=True)

    runs = []
    before = wait_quiet(args.max_busy, args.patience)
    swept, wall, others = timed(lambda: sweep(store, ["mlp", "gated", "context"], [[MINILM]], seeds=args.seeds,
                                              config=CONFIG, progress=True))
    timings["sweep"] = (wall, before, others, len(swept.runs))
    runs += swept.runs
    print(f"3-head x {args.seeds}-seed sweep: {wall:.1f} s", flush=True)
    runs += sweep(store, ["linear", "late", "attention", "knn"], [[MINILM]], seeds=args.seeds,
                  config=CONFIG, progress=True).runs
    runs += sweep(store, ["mlp", "context"], [[MINILM, CTX2]], seeds=args.seeds, config=CONFIG, progress=True).runs
    runs += sweep(store, ["context"], [[MINILM]], seeds=args.seeds, config=CONFIG, grid=VARIANT, progress=True).runs
    (OUT / "heads_meld.json").write_text(json.dumps({"reference": reference, "timings": timings, "runs": runs,
                                                     "config": asdict(CONFIG)}, indent=2))

    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in runs:
        setting = ", ".join(f"{k} {v}" for k, v in r["setting"].items())
        groups.setdefault((r["head"], " + ".join(r["features"]), setting), []).append(r)
    ordered = sorted(groups.items(), key=lambda kv: (len(kv[0][1]), kv[0][2], ORDER.index(kv[0][0])))
    lines = [
        f"Date {date.today().isoformat()}; machine: {machine()}; torch threads {args.threads}.",
        (f"`python bench/heads_meld.py --seeds {args.seeds}`: MELD text only, train {len(data.rows('train'))} / "
        f"dev {len(data.rows('dev'))} / test {len(data.rows('test'))} utterances, 7 emotions. Each run: the "
        f"head's default hyperparameters and the training defaults of `emostore train` (AdamW lr {CONFIG.lr}, "
        f"weight decay {CONFIG.weight_decay}, batches of {CONFIG.batch(False)} utterances or "
        f"{CONFIG.batch(True)} dialogues, early stopping on dev weighted F1 with patience {CONFIG.patience}, "
        "no class weights) unless the row says otherwise; scored once on test. Mean ± sample std over "
        f"{args.seeds} seeds."),
        "",
        "| head | features | training | test weighted F1 | test accuracy | test macro F1 | seconds per run |",
        "|---|---|---|---|---|---|---|",
        f"| logistic regression (reference, scikit-learn) | {MINILM} | | {reference:.4f} | | | |",
    ]
    for (head, features, setting), rs in ordered:
        lines.append(f"| {head} | {features} | {setting or 'defaults'} | "
                     f"{mean_std([r['metrics']['weighted_f1'] for r in rs])} | "
                     f"{mean_std([r['metrics']['accuracy'] for r in rs])} | "
                     f"{mean_std([r['metrics']['macro_f1'] for r in rs])} | "
                     f"{np.mean([r['seconds'] for r in rs]):.1f} |")
    best = {h: max(np.mean([r["metrics"]["weighted_f1"] for r in rs]) for (hh, _, _), rs in groups.items() if hh == h)
            for h in {h for h, _, _ in groups}}
    lines += [
        "",
        ("Wall times (each started once other processes used at most "
        f"{args.max_busy} cores; the machine is shared, so the cores others used during the run are given):"),
        "",
        "| run | wall time | epochs / runs | others before / during (cores) |",
        "|---|---|---|---|",
        *[f"| {label} | {timings[k][0]:.1f} s | {timings[k][3]} | {timings[k][1]:.2f} / {timings[k][2]:.2f} |"
          for label, k in (("one `mlp` run (text/minilm)", "mlp"), ("one `context` run (text/minilm)", "context"),
                           (f"sweep: mlp, gated, context x {args.seeds} seeds", "sweep"))],
        "",
        (f"- Best context head: {best['context']:.4f} weighted F1 (target 0.60); best utterance-level head: "
        f"{max(v for h, v in best.items() if h != 'context'):.4f}; logistic regression reference {reference:.4f}."),
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_subsection("MELD, text only", text)


if __name__ == "__main__":
    main()
