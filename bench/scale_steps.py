"""The measured commands of the scale benchmark, each in its own process (``scale_run.run``).

Training runs a fixed number of epochs (``--epochs``, no early stop) so sizes compare; their
per-epoch times come from the checkpoint's history. mlp is also trained with its features held
in memory and forced to stream (``--memory-budget``) at the sizes where both fit, for the
out-of-core rate. Index builds whose vectors would not fit the memory here are not run (the
result says why). Flat and HNSW indexes are dropped once measured, so that search and predict
use the IVF-PQ index at every size.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import scale_run
from scale_run import emostore

QUERY = "I can't believe you did that to me!"
EPOCHS = {"mlp": 2, "context": 1, "logreg": 1}
#: mlp with its features held in memory and forced to stream, at these sizes.
COMPARE_SIZES = (100_000, 1_000_000)


def train_args(store: str, out: Path, head: str, epochs: int, *extra: str) -> list[str]:
    """``emostore train`` of one head on the text vectors, for ``epochs`` epochs (no early stop)."""
    from scale import FEATURES

    return ["train", store, "-f", FEATURES, "--head", head, "--out", str(out), "--epochs", str(epochs),
            "--patience", str(epochs), "--device", "cpu", "--overwrite", "--quiet", "--json", *extra]


def measure(size: Any, args: Any) -> None:
    from scale import cap_mb

    store, ckpt, log = str(size.store), size.ckpt, size.dir / "log.txt"

    def run(*cmd: str, timeout: float = 4 * 3600) -> dict[str, Any]:
        return scale_run.run(emostore(*cmd), cap_mb=cap_mb(), log=log, timeout_s=timeout)

    size.step("info", lambda: slim(run("info", store, "--json"), ["utterances"]))
    for head, epochs in EPOCHS.items():
        size.step(f"train_{head}", lambda h=head, e=epochs: train_result(run(*train_args(store, ckpt / h, h, e))))
    if size.rows in COMPARE_SIZES:
        for mode, budget in (("memory", "20G"), ("stream", "256M")):
            size.step(f"train_mlp_{mode}", lambda b=budget, m=mode: train_result(run(
                *train_args(store, ckpt / f"mlp-{m}", "mlp", 2, "--memory-budget", b))))
    size.step("evaluate", lambda: slim(run("evaluate", str(ckpt / "mlp"), "--store", store, "--json"),
                                       ["n", "accuracy", "weighted_f1"]))
    index_steps(size, run)
    size.step("search_1", lambda: slim(run("search", store, QUERY, "-k", "10", "--index", "ivf", "--json"),
                                       ["nearest_emotion"]))
    size.step("search_100", lambda: scale_run.run(
        [sys.executable, str(Path(__file__).with_name("scale_search.py")), store, "ivf", "100"],
        cap_mb=cap_mb(), log=log))
    size.step("predict", lambda: slim(run("predict", str(ckpt / "mlp"), "--text", QUERY, "--store", store,
                                          "--device", "cpu", "--json"), ["label", "evidence"]))


def measure_targets(size: Any, runs: int = 3) -> None:
    """The targets' commands again, for a quiet machine: ``info`` ``runs`` times, then mlp for 2
    epochs (recorded as ``quiet_info_<i>`` and ``quiet_train_mlp``)."""
    from scale import cap_mb

    store, log = str(size.store), size.dir / "log.txt"

    def run(*cmd: str) -> dict[str, Any]:
        res = scale_run.run(emostore(*cmd), cap_mb=cap_mb(), log=log, timeout_s=3600)
        return {**res, "date": time.strftime("%Y-%m-%d")}

    for i in range(runs):
        size.step(f"quiet_info_{i}", lambda: slim(run("info", store, "--json"), ["utterances"]))
    size.step("quiet_train_mlp", lambda: train_result(run(*train_args(store, size.ckpt / "mlp-quiet", "mlp", 2))))


def index_steps(size: Any, run: Any) -> None:
    """flat, IVF-PQ (48 bytes a vector) and HNSW builds; flat and HNSW dropped once measured."""
    from scale import FEATURES, cap_mb

    vectors_mb = size.rows * 384 * 4 / 2**20
    kinds = {"flat": ([], vectors_mb), "ivf": (["--pq-m", "48"], size.rows * 48 / 2**20 + 200),
             "hnsw": (["--M", "32"], vectors_mb + size.rows * 32 * 2 * 4 / 2**20)}
    for kind, (extra, need_mb) in kinds.items():
        def build(kind: str = kind, extra: list[str] = extra, need_mb: float = need_mb) -> dict[str, Any]:
            if need_mb > cap_mb():
                return {"skipped": f"not run: the index needs about {need_mb:,.0f} MB of memory, "
                                   f"{cap_mb():,.0f} MB may be used here now"}
            return slim(run("index", "build", str(size.store), "--features", FEATURES, "--kind", kind, "--name",
                            kind, "--quiet", "--json", *extra), ["n_vectors", "build_seconds"])

        size.step(f"index_{kind}", build)
        if kind != "ivf":
            shutil.rmtree(size.store / "indexes" / kind, ignore_errors=True)


def slim(result: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """The measure, with only ``keys`` of the command's JSON output kept."""
    out = result.get("output")
    if isinstance(out, dict):
        result["output"] = {k: out.get(k) for k in keys}
    return result


def train_result(result: dict[str, Any]) -> dict[str, Any]:
    out = result.get("output")
    if isinstance(out, dict):
        meta = json.loads((Path(out["checkpoint"]) / "checkpoint.json").read_text())
        result["output"] = {k: out.get(k) for k in ("dev_score", "epochs_run", "notes", "params")}
        result["history"] = meta["training"]["history"]
    return result
