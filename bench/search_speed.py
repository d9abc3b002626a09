"""FAISS against NumPy brute force: build time and query latency at 10k, 100k and 1M 384-d vectors,
and recall@10 / latency of ivf and hnsw against flat (random unit vectors at 1M, real MELD vectors
at their size). Writes a section of BENCHMARKS.md with ``--write``.

    python bench/search_speed.py [--sizes 10000,100000,1000000] [--meld-store bench/out/meld] [--write]
"""

from __future__ import annotations

import argparse
import time
from datetime import date
from pathlib import Path

import faiss
import benchlib
import numpy as np

from emostore.search.index import NearestIndex, normalise

ROOT = Path(__file__).resolve().parents[1]
DIM = 384


def median_ms(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def numpy_topk(X: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    s = q @ X.T
    part = np.argpartition(-s, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(s, part, 1), axis=1)
    return np.take_along_axis(part, order, 1)


def recall(exact: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(exact, found)]))


def compare_sizes(sizes: list[int], rng: np.random.Generator) -> list[str]:
    rows = ["| vectors | FAISS flat build | NumPy build | FAISS 1 query | NumPy 1 query | FAISS 100 queries | NumPy 100 queries |",
            "|---|---|---|---|---|---|---|"]
    for n in sizes:
        X = normalise(rng.standard_normal((n, DIM), dtype=np.float32))
        q1, q100 = X[:1] + 0.01, X[:100] + 0.01
        t = time.perf_counter()
        flat = NearestIndex.build(X, np.arange(n))
        build = time.perf_counter() - t
        t = time.perf_counter()
        Xn = np.ascontiguousarray(normalise(X))  # NumPy's "index": the normalised matrix
        nbuild = time.perf_counter() - t
        reps = 20 if n <= 100_000 else 5
        f1 = median_ms(lambda: flat.search(q1, 10), reps)
        n1 = median_ms(lambda: numpy_topk(Xn, normalise(q1), 10), reps)
        f100 = median_ms(lambda: flat.search(q100, 10), max(3, reps // 4))
        n100 = median_ms(lambda: numpy_topk(Xn, normalise(q100), 10), max(3, reps // 4))
        assert (flat.search(q100, 10)[1] == numpy_topk(Xn, normalise(q100), 10)).mean() > 0.99
        rows.append(f"| {n:,} | {build:.2f} s | {nbuild:.2f} s | {f1:.2f} ms | {n1:.2f} ms | {f100:.1f} ms | {n100:.1f} ms |")
        print(rows[-1], flush=True)
    return rows


def approximate(X: np.ndarray, label: str, configs: list[tuple[str, dict]], queries: int = 200) -> list[str]:
    rows = [f"| {label} | kind | parameters | build | recall@10 | 1 query | 100 queries |", "|---|---|---|---|---|---|---|"]
    q = X[:queries] + 0.01
    flat = NearestIndex.build(X, np.arange(len(X)))
    _, exact = flat.search(q, 11)
    exact = exact[:, :10]
    f1 = median_ms(lambda: flat.search(q[:1], 10), 10)
    f100 = median_ms(lambda: flat.search(q[:100], 10), 3)
    rows.append(f"| {len(X):,} | flat | exact | {flat.meta['build_seconds']:.1f} s | 1.000 | {f1:.2f} ms | {f100:.1f} ms |")
    print(rows[-1], flush=True)
    for kind, params in configs:
        build_params = {k: v for k, v in params.items() if k not in ("nprobe_sweep", "ef_sweep")}
        idx = NearestIndex.build(X, np.arange(len(X)), kind=kind, **build_params)
        sweep = params.get("nprobe_sweep") or params.get("ef_sweep") or [None]
        for value in sweep:
            extra = {"nprobe": value} if "nprobe_sweep" in params else ({"ef_search": value} if value else {})
            _, found = idx.search(q, 10, **extra)
            r = recall(exact, found)
            s1 = median_ms(lambda: idx.search(q[:1], 10, **extra), 10)
            s100 = median_ms(lambda: idx.search(q[:100], 10, **extra), 3)
            shown = {**build_params, **extra}
            rows.append(f"| | {kind} | {', '.join(f'{k}={v}' for k, v in shown.items())} | "
                        f"{idx.meta['build_seconds']:.1f} s | {r:.3f} | {s1:.2f} ms | {s100:.1f} ms |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--meld-store", type=Path, default=ROOT / "bench" / "out" / "meld")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    sizes = [int(s) for s in args.sizes.split(",")]
    out = ["## Search (issue 5)", "",
           f"Date {date.today().isoformat()}; machine: {faiss.omp_get_max_threads()} FAISS threads on this 2-core CPU, "
           f"no GPU; faiss {faiss.__version__}. Vectors are L2-normalised, similarity is the inner product; "
           "latencies are medians, k = 10.", "",
           "### Exact search: FAISS flat against a NumPy matrix product (random unit vectors, 384-d)", ""]
    out += compare_sizes(sizes, rng)
    big = sizes[-1]
    X = normalise(rng.standard_normal((big, DIM), dtype=np.float32))
    out += ["", f"### Approximate search at {big:,} random unit vectors (a worst case: no cluster structure)", ""]
    out += approximate(X, "vectors", [
        ("ivf", {"nlist": 1024, "nprobe_sweep": [16, 64, 256]}),
        ("ivf", {"nlist": 1024, "pq_m": 48, "nprobe_sweep": [64]}),
        ("hnsw", {"M": 16, "ef_construction": 40, "ef_sweep": [64, 256]}),
    ])
    if (args.meld_store / "zarr.json").exists():
        from emostore.store import Store

        _, Xm, mask = Store.open(args.meld_store).read("text/minilm")
        Xm = normalise(Xm[mask])
        out += ["", f"### Real MELD text vectors (all-MiniLM-L6-v2, {len(Xm):,})", ""]
        out += approximate(Xm, "vectors", [("ivf", {"nlist": 128, "nprobe_sweep": [8, 32]}),
                                           ("hnsw", {"M": 32, "ef_sweep": [64]})])
    text = "\n".join(out) + "\n"
    print(text)
    if args.write:
        benchlib.write_section(out[0], text)

if __name__ == "__main__":
    main()
