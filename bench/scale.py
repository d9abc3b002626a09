"""Cost as the work grows: every command on stores of 10k, 100k, 1M and 10M rows.

For each size the store is built from MELD (``bench/scale_data.py``: real dialogues recombined
under new ids), then each command runs in its own process, measured for wall time, CPU time and
peak resident memory (``bench/scale_run.py``), with the machine's state beside each figure:
ingest, extract (per 100k rows), info, train (mlp, context, logreg), evaluate, index build (flat,
IVF-PQ, HNSW), search (1 and 100 queries) and predict with evidence. Vectors come from the real
all-MiniLM-L6-v2 up to ``--real-max`` rows (1M by default); above, they are derived from real
ones (see ``scale_data``), and the report says which. The growth exponent of each measure is
fitted over the sizes and written to BENCHMARKS.md with a log-log plot (``bench/scale_report.py``).

Every finished step is recorded in ``WORK/<rows>/results.json`` and skipped on a rerun, so a
half-built size resumes where it stopped (extraction resumes at its first pending chunk).
Run it niced on a shared machine:

    nice -n 5 python bench/scale.py build --sizes 10000,100000,1000000,10000000
    nice -n 5 python bench/scale.py measure --sizes 10000,100000,1000000,10000000
    python bench/scale.py report --write

The targets are for a quiet machine: ``quiet --sizes 10000000`` measures their commands again
(``info`` three times, mlp for two epochs) with nothing else running, and ``quiet-report --write``
writes them beside the curve.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import scale_data
import scale_run
from scale_run import emostore

ROOT = Path(__file__).resolve().parents[1]
MELD = ROOT.parent / "shared" / "data" / "meld"
FEATURES = "text/minilm"


class Size:
    """One size's folder: corpus, store, checkpoints and the results of its finished steps."""

    def __init__(self, work: Path, rows: int):
        self.rows = rows
        self.dir = work / str(rows)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.csv, self.store, self.ckpt = self.dir / "corpus.csv", self.dir / "store", self.dir / "ckpt"
        self.path = self.dir / "results.json"
        self.results: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def save(self) -> None:
        tmp = self.path.with_suffix(".partial")
        tmp.write_text(json.dumps(self.results, indent=1))
        tmp.replace(self.path)

    def step(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run ``fn`` unless ``name`` is already recorded; record what it returns."""
        if name in self.results:
            return self.results[name]
        print(f"[{self.rows:,}] {name} ...", flush=True)
        result = fn()
        self.results[name] = result
        self.save()
        shown = {k: result.get(k) for k in ("wall_s", "cpu_s", "peak_rss_mb", "stopped", "returncode")}
        print(f"[{self.rows:,}] {name}: {json.dumps(shown)}", flush=True)
        return result


def cap_mb(share: float = 0.8) -> float:
    """The memory a step may take: a share of what the machine has available now."""
    import psutil

    return share * psutil.virtual_memory().available / 2**20


def build(size: Size, args: argparse.Namespace) -> None:
    """Corpus, ingest, then the real extraction (up to ``--real-max`` rows) or derived vectors."""
    if not size.csv.exists():
        scale_data.write_corpus(args.meld, size.rows, size.csv)
    log = size.dir / "log.txt"

    def ingest() -> dict[str, Any]:
        res = scale_run.run(emostore("ingest", "csv", str(size.csv), "--out", str(size.store), "--dataset",
                                     "meld-recombined", "--overwrite", "--json"), cap_mb=cap_mb(), log=log)
        if isinstance(res["output"], dict):
            res["output"] = {k: res["output"].get(k) for k in ("utterances", "dialogues", "splits")}
        return res

    size.step("ingest", ingest)
    if size.results["ingest"].get("stopped"):  # too big for ingest here: the same rows, written in blocks
        size.step("table_in_blocks", lambda: timed(lambda: scale_data.write_table_in_blocks(
            size.csv, size.store, size.rows)))
    elif size.results["ingest"].get("returncode"):
        raise SystemExit(f"ingest of {size.rows:,} rows failed: {size.results['ingest']}")
    if size.rows <= args.real_max:
        size.step("extract", lambda: extract(size, log))
    else:
        size.step("derive", lambda: derive(size, args))


def extract(size: Size, log: Path) -> dict[str, Any]:
    """The real encoder over every row; a resumed run adds its rows and times to the earlier ones."""
    partial = size.dir / "extract_runs.json"
    runs = json.loads(partial.read_text()) if partial.exists() else []
    before = rows_done(size.store)
    res = scale_run.run(emostore("extract", "text", str(size.store), "--device", "cpu", "--quiet", "--json"),
                        cap_mb=cap_mb(), log=log)
    res.pop("output")
    res["rows_run"] = rows_done(size.store) - before  # a stopped run counts the chunks it finished
    runs.append(res)
    partial.write_text(json.dumps(runs, indent=1))
    if res["returncode"]:
        raise SystemExit(f"extraction of {size.rows:,} rows stopped: {res}")
    rows = sum(r["rows_run"] for r in runs)
    total = {k: round(sum(r[k] for r in runs), 3) for k in ("wall_s", "cpu_s")}
    return {**runs[-1], **total, "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "rows_run": rows,
            "runs": len(runs), "per_100k_wall_s": round(total["wall_s"] / max(rows, 1) * 1e5, 2),
            "per_100k_cpu_s": round(total["cpu_s"] / max(rows, 1) * 1e5, 2)}


def rows_done(store: Path) -> int:
    from emostore.store import Store

    st = Store.open(store, mode="r")
    return int(st.feature_set(FEATURES).done().sum()) if st.has_feature_set(FEATURES) else 0


def timed(fn: Callable[[], Any]) -> dict[str, Any]:
    """Wall time of work done by this process (building, not a command: not part of the curve)."""
    t = time.perf_counter()
    fn()
    return {"wall_s": round(time.perf_counter() - t, 1), "load_after": scale_run.load()}


def derive(size: Size, args: argparse.Namespace) -> dict[str, Any]:
    return {**timed(lambda: scale_data.write_derived(size.store, args.meld, args.work, progress=False)),
            "vectors": "derived"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["build", "measure", "report", "quiet", "quiet-report"])
    ap.add_argument("--sizes", default="10000,100000,1000000,10000000")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "scale")
    ap.add_argument("--meld", type=Path, default=MELD)
    ap.add_argument("--real-max", type=int, default=1_000_000, help="largest size encoded by the real encoder")
    ap.add_argument("--write", action="store_true", help="report: write the BENCHMARKS.md section and the plot")
    ap.add_argument("--drop-store-after", type=int, default=0,
                    help="measure: delete stores of at least this many rows once measured (0: keep)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.what == "report":
        import scale_report

        scale_report.report(args.work, sizes, write=args.write)
        return
    if args.what == "quiet-report":
        import scale_targets

        scale_targets.quiet_report(args.work, sizes, write=args.write)
        return
    for rows in sizes:
        size = Size(args.work, rows)
        build(size, args)
        if args.what == "measure":
            import scale_steps

            scale_steps.measure(size, args)
            if args.drop_store_after and rows >= args.drop_store_after:
                shutil.rmtree(size.store, ignore_errors=True)
        if args.what == "quiet":
            import scale_steps

            scale_steps.measure_targets(size)


if __name__ == "__main__":
    main()
