"""Nearest-neighbour search speed: exact FAISS against NumPy, and approximate indexes on 1M realistic vectors.

1. Exact search at 10k, 100k and 1M random 384-d unit vectors (the cost of exact search does not
   depend on the data): FAISS ``IndexFlatIP`` with FAISS's own defaults, FAISS as emostore runs it
   (:mod:`emostore.search.settings`), and a NumPy matrix product with ``argpartition``; 1 query
   and a batch of 100.
2. 1,000,000 vectors with the structure of real sentence embeddings, made from the MELD text
   vectors (all-MiniLM-L6-v2, 384-d): the train and dev utterances (distinct texts) are the base
   vectors; each synthetic vector is a base vector moved by up to its nearest-neighbour distance
   in a random direction within the span of the directions to its 10 nearest real neighbours,
   L2-normalised again (:func:`synthetic`). The queries are 1,000 held-out test-split
   utterances (real vectors, none in the index). Exact search (flat) gives the true top 10; IVF,
   IVF-PQ and HNSW are measured for build time, index size, recall@10 against it, and latency.

The MELD store is built first when it is missing (ingest + ``extract text``, a few minutes).
Writes a section of BENCHMARKS.md with ``--write``. Timing needs a quiet machine: the load
average before and after is in the output.

    python bench/search_speed.py [--sizes 10000,100000,1000000] [--n 1000000] [--write]
    python bench/search_speed.py --gpu --write     # on a CUDA machine with `pip install 'emostore[gpu]'`
"""

from __future__ import annotations

import argparse
import gc
import time
from datetime import date
from pathlib import Path

import benchlib
import numpy as np

from emostore.search import settings
from emostore.search.index import NearestIndex, normalise

ROOT = Path(__file__).resolve().parents[1]
DIM = 384
SECTION = "## Search (issue 12)"
TARGET_SPEEDUP, TARGET_RECALL = 10.0, 0.95


def load() -> str:
    return ", ".join(Path("/proc/loadavg").read_text().split()[:3])


def timed(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    """Median wall time of ``repeats`` calls, in ms."""
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


def unit_vectors(n: int, rng: np.random.Generator) -> np.ndarray:
    X = np.empty((n, DIM), np.float32)
    for s in range(0, n, 100_000):
        x = rng.standard_normal((min(100_000, n - s), DIM), dtype=np.float32)
        X[s:s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return X


def exact_section(sizes: list[int], rng: np.random.Generator) -> list[str]:
    rows = [("| vectors | threads | FAISS defaults, 1 query | FAISS here, 1 query | NumPy, 1 query | "
             "FAISS defaults, 100 queries | FAISS here, 100 queries | NumPy, 100 queries |"),
            "|---|---|---|---|---|---|---|---|"]
    for n in sizes:
        rows.append(exact_row(n, rng))
        print(rows[-1], flush=True)
        gc.collect()
    return rows


def exact_row(n: int, rng: np.random.Generator) -> str:
    faiss = settings.faiss()
    flat = NearestIndex.build(unit_vectors(n, rng), np.arange(n))
    gc.collect()
    X = faiss.rev_swig_ptr(flat.index.get_xb(), n * DIM).reshape(n, DIM)  # NumPy reads FAISS's copy: no second
    q100 = normalise(X[:100] + 0.01)
    q1 = q100[:1].copy()
    reps1, reps100 = (20, 5) if n <= 100_000 else (7, 3)
    res: dict[str, list[float]] = {}
    threads = 0
    for _ in range(2):  # alternate, so that a change of load hits every column alike
        threads = settings.configure(DIM)
        res.setdefault("here1", []).append(timed(lambda: flat.search(q1, 10), reps1))
        res.setdefault("here100", []).append(timed(lambda: flat.search(q100, 10), reps100))
        res.setdefault("np1", []).append(timed(lambda: numpy_topk(X, q1, 10), reps1))
        res.setdefault("np100", []).append(timed(lambda: numpy_topk(X, q100, 10), reps100))
        faiss.cvar.distance_compute_blas_threshold = 128000  # FAISS 1.15's defaults
        faiss.omp_set_num_threads(settings.cores())
        res.setdefault("def1", []).append(timed(lambda: flat.index.search(q1, 10), reps1))
        res.setdefault("def100", []).append(timed(lambda: flat.index.search(q100, 10), max(1, reps100 - 2)))
    assert (flat.search(q100, 10)[1] == numpy_topk(X, q100, 10)).mean() > 0.99
    m = {k: float(np.median(v)) for k, v in res.items()}
    return (f"| {n:,} | {threads} | {m['def1']:.1f} ms | **{m['here1']:.1f} ms** | {m['np1']:.1f} ms | "
            f"{m['def100']:.0f} ms | **{m['here100']:.0f} ms** | {m['np100']:.0f} ms |")


def meld_vectors(meld: Path, work: Path) -> tuple[np.ndarray, np.ndarray]:
    """(base vectors: distinct train + dev utterances, queries: distinct test utterances not among them)."""
    from emostore.store import Store

    store_path = work / "meld"
    if not (store_path / "zarr.json").exists() or not Store.open(store_path, mode="r").has_feature_set("text/minilm"):
        from emostore.extract.encoders.text import text_encoder
        from emostore.extract.runner import run_extraction
        from emostore.ingest.run import ingest

        store, _ = ingest("meld", meld, store_path, overwrite=True)
        run_extraction(store, text_encoder("minilm"), progress=True)
    store = Store.open(store_path, mode="r")
    _, X, mask = store.read("text/minilm")
    split = store.table["split"].to_numpy()
    X = normalise(X)
    base = np.unique(X[mask & (split != "test")], axis=0)
    test = np.unique(X[mask & (split == "test")], axis=0)
    seen = {v.tobytes() for v in base}
    return base, np.array([v for v in test if v.tobytes() not in seen], np.float32)


def synthetic(base: np.ndarray, n: int, rng: np.random.Generator, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``n`` vectors: the bases, then new points around them. A new point is a base moved by up to its
    nearest-neighbour distance in a random direction within the span of the directions to its ``k``
    nearest real neighbours (where the real data lies around it), renormalised: new sentences between
    the real ones, not points off in the 384 - k directions no real neighbour goes. Returns (vectors,
    each base's nearest-neighbour distance)."""
    flat = NearestIndex.build(base, np.arange(len(base)))
    sims, nbrs = flat.search(base, k + 1)
    nn = np.sqrt(np.maximum(0.0, 2 - 2 * sims[:, 1])).astype(np.float32)  # unit vectors: |a - b|^2 = 2 - 2 a.b
    out = np.empty((n, base.shape[1]), np.float32)
    out[:len(base)] = base
    for s in range(len(base), n, 50_000):
        e = min(n, s + 50_000)
        which = rng.integers(0, len(base), e - s)
        dirs = base[nbrs[which, 1:]] - base[which, None, :]  # [m, k, D] towards the k nearest real neighbours
        dirs /= np.maximum(np.linalg.norm(dirs, axis=2, keepdims=True), 1e-12)
        step = np.einsum("mk,mkd->md", rng.standard_normal((e - s, k)).astype(np.float32), dirs)
        step /= np.maximum(np.linalg.norm(step, axis=1, keepdims=True), 1e-12)
        length = nn[which] * rng.random(e - s, dtype=np.float32)
        out[s:e] = normalise(base[which] + step * length[:, None])
    return out, nn


def approximate_section(X: np.ndarray, queries: np.ndarray,
                        configs: list[tuple[str, dict, str, list]]) -> tuple[list[str], list[str], np.ndarray]:
    faiss = settings.faiss()
    rows = [("| index | build parameters | search | build | index size | recall@10 | 1 query | 100 queries | "
             "speed-up, 1 query | speed-up, 100 queries |"), "|---|---|---|---|---|---|---|---|---|---|"]
    flat = NearestIndex.build(X, np.arange(len(X)))
    top_sims, exact = flat.search(queries, 10)
    singles = queries[:50]

    def latency(idx: NearestIndex, **extra: object) -> tuple[float, float]:
        one = float(np.median([timed(lambda q=q: idx.search(q[None, :], 10, **extra), 1) for q in singles]))
        return one, timed(lambda: idx.search(queries[:100], 10, **extra), 3)

    e1, e100 = latency(flat)

    def size(idx: NearestIndex) -> float:
        return len(faiss.serialize_index(idx.index)) / 2**20

    rows.append(f"| flat (exact) | | | {flat.meta['build_seconds']:.1f} s | {size(flat):,.0f} MB | 1.000 | "
                f"{e1:.1f} ms | {e100:.0f} ms | 1.0x | 1.0x |")
    print(rows[-1], flush=True)
    del flat
    gc.collect()
    best: list[str] = []
    for kind, params, sweep_key, sweep in configs:
        idx = NearestIndex.build(X, np.arange(len(X)), kind=kind, **params)
        mb = size(idx)
        for value in sweep:
            extra = {sweep_key: value}
            _, found = idx.search(queries, 10, **extra)
            r = recall(exact, found)
            s1, s100 = latency(idx, **extra)
            label = {"ivf": "IVF-PQ" if params.get("pq_m") else "IVF-Flat", "hnsw": "HNSW"}[kind]
            rows.append(f"| {label} | {', '.join(f'{k}={v}' for k, v in params.items())} | {sweep_key}={value} | "
                        f"{idx.meta['build_seconds']:.0f} s | {mb:,.0f} MB | {r:.3f} | {s1:.2f} ms | {s100:.1f} ms | "
                        f"{e1 / s1:.0f}x | {e100 / s100:.0f}x |")
            print(rows[-1], flush=True)
            if r >= TARGET_RECALL and e1 / s1 >= TARGET_SPEEDUP:
                best.append(f"{label} {', '.join(f'{k}={v}' for k, v in {**params, **extra}.items())}: recall@10 "
                            f"{r:.3f}, {e1 / s1:.0f}x (1 query) and {e100 / s100:.0f}x (100 queries) faster than exact")
        del idx
        gc.collect()
    return rows, best, top_sims[:, 0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000", help="exact-search sizes (random vectors)")
    ap.add_argument("--n", type=int, default=1_000_000, help="size of the realistic set")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--meld", type=Path, default=ROOT.parent / "shared" / "data" / "meld")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "search")
    ap.add_argument("--skip-exact", action="store_true", help="only the realistic 1M part")
    ap.add_argument("--gpu", action="store_true", help="require a GPU: indexes are built and searched on it")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    faiss = settings.faiss()
    if args.gpu and settings.gpus() == 0:
        raise SystemExit("--gpu: FAISS sees no GPU (install 'emostore[gpu]' on a CUDA machine)")
    device = "no GPU"
    if settings.gpus():
        import torch

        device = f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else f"{settings.gpus()} GPU(s)"
    before = load()
    rng = np.random.default_rng(0)
    out = [SECTION, ""]
    if not args.skip_exact:
        out += ["### Exact search: FAISS flat against NumPy (random 384-d unit vectors, k = 10)", ""]
        out += exact_section([int(s) for s in args.sizes.split(",")], rng)
    args.work.mkdir(parents=True, exist_ok=True)
    base, test = meld_vectors(args.meld, args.work)
    queries = test[rng.permutation(len(test))[:args.queries]]
    X, nn = synthetic(base, args.n, rng)
    sims_real = NearestIndex.build(base, np.arange(len(base))).search(queries, 1)[0][:, 0]
    nlist = 1024
    configs = [
        ("ivf", {"nlist": nlist}, "nprobe", [8, 16, 32, 64, 128]),
        ("ivf", {"nlist": nlist, "pq_m": 48}, "nprobe", [16, 64]),
        ("ivf", {"nlist": nlist, "pq_m": 96}, "nprobe", [16, 64]),
        ("hnsw", {"M": 32, "ef_construction": 80}, "ef_search", [32, 64, 128, 256, 512, 1024]),
    ]
    rows, best, sims_synth = approximate_section(X, queries, configs)
    after = load()
    out += ["", f"### Approximate search at {args.n:,} vectors made from MELD text vectors", "",
            (f"{len(base):,} distinct train + dev utterance vectors are the bases (nearest-neighbour distance: "
            f"median {np.median(nn):.3f}); {args.queries} held-out test utterances are the queries. Nearest "
            f"cosine similarity of a query: median {np.median(sims_real):.3f} among the {len(base):,} real vectors, "
            f"{np.median(sims_synth):.3f} among the {args.n:,}. Latency: the median of 50 single queries, and "
            "one call with 100 queries (median of 3); speed-up against exact search of the same queries; "
             "index size as FAISS serialises it."), "", *rows, "",
            f"- Target: >= {TARGET_SPEEDUP:g}x faster than exact search at recall@10 >= {TARGET_RECALL}: "
            + ("**met** by " + "; ".join(best) if best else "**missed** by every configuration above") + "."]
    head = (f"Date {date.today().isoformat()}; machine: {benchlib.machine()}, {device}; faiss {faiss.__version__}, "
            f"numpy {np.__version__}; FAISS threads as emostore sets them (the free cores: "
            f"{settings.threads()} at the end). Machine shared with other jobs: load average {before} before, "
            f"{after} after. `python bench/search_speed.py{' --gpu' if args.gpu else ''}`.")
    out.insert(2, head)
    out.insert(3, "")
    text = "\n".join(out) + "\n"
    print(text)
    if args.write:
        benchlib.write_section(SECTION, text)


if __name__ == "__main__":
    main()
