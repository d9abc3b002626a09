"""Index builds in bounded memory: vectors stream from the store one block of rows at a time.

1. The masks of the feature sets give the rows to index (valid in every feature set). Feature
   sets other than text get their mean and std in the same pass, block by block: acoustic and
   facial features mix scales (Hz, dB, ratios), and without a z-score the largest would dominate
   every cosine; text embeddings are made for cosine as they are.
2. IVF only: a uniform random sample of those rows (``train_size``) trains the quantizer.
3. Blocks are combined (z-score, L2 per part, concatenated, L2) and added to the index.

With ``shards=N`` the rows are cut into N contiguous ranges, each added to its own copy of the
(trained, empty) index, by the workers of a Dask cluster when one is given. Flat and IVF
sub-indexes are merged in order (``merge_from``), which gives exactly the index of a single
build; HNSW graphs cannot be merged, so they are kept as N sub-indexes and searched together
(``faiss.IndexShards``), each an exact HNSW of its part.

Peak memory: the index, the training sample, and one block of vectors (plus one sub-index when
merging shards), never all of the store's vectors.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emostore.core.clock import now
from emostore.core.progress import progress_bar
from emostore.errors import UserError
from emostore.search.index import NearestIndex, _faiss, check_ivf_training, combine, new_index, store_meta
from emostore.store import Location, Store

#: Target bytes of vectors in one block (rounded to whole chunks of the first feature set).
BLOCK_BYTES = 4 * 1024 * 1024
#: Most vectors sampled to train an IVF quantizer by default (FAISS wants >= 39 per list).
TRAIN_PER_LIST, MIN_TRAIN, MAX_TRAIN = 50, 10_000, 200_000


@dataclass(frozen=True)
class Source:
    """What to stream (picklable, for cluster workers): a store's feature sets and how to combine them."""

    location: Location
    features: tuple[str, ...]
    stats: dict[str, dict[str, list[float]]]
    block_rows: int

    def open(self) -> Store:
        return Store.open(self.location, mode="r")

    def blocks(self, store: Store, start: int, stop: int,
               wanted: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(store rows, vectors)`` of the valid rows in ``[start, stop)`` (only those of ``wanted``,
        sorted store rows, when given), one block at a time."""
        sets = [store.feature_set(f) for f in self.features]
        for lo in range(start, stop, self.block_rows):
            hi = min(lo + self.block_rows, stop)
            parts, valid = [], np.ones(hi - lo, dtype=bool)
            for fs in sets:
                _, X, mask = fs.read(slice(lo, hi))
                parts.append(X)
                valid &= mask
            if wanted is not None:
                valid &= np.isin(np.arange(lo, hi), wanted)
            keep = np.flatnonzero(valid)
            if len(keep) == len(valid):
                yield lo + keep, combine(parts, list(self.features), self.stats)
            elif len(keep):
                yield lo + keep, combine([p[keep] for p in parts], list(self.features), self.stats)
            del parts


def release_large_buffers() -> None:
    """Have glibc return every buffer of 1 MiB or more to the OS when freed. By default it raises
    that threshold to the largest buffer freed so far and keeps later ones in its heaps, so the
    process would hold on to a dozen block-sized buffers it no longer uses."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


M_MMAP_THRESHOLD = -3


def plan(store: Store, features: list[str]) -> tuple[Source, np.ndarray]:
    """The source to stream and the store rows to index (pass 1: masks and standardisation)."""
    sets = [store.feature_set(f) for f in features]
    dim = sum(fs.dim for fs in sets)
    chunk = sets[0].chunk_rows
    block = max(chunk, (BLOCK_BYTES // (4 * dim)) // chunk * chunk)
    valid = np.ones(len(store), dtype=bool)
    for fs in sets:
        valid &= fs.mask()
    rows = np.flatnonzero(valid)
    if len(rows) == 0:
        raise UserError(f"{store.url}: no row has valid {' + '.join(features)} features to index")
    scaled = [fs for fs in sets if not fs.name.startswith("text/")]
    stats: dict[str, dict[str, list[float]]] = {}
    if scaled:
        moments = {fs.name: _Moments(fs.dim) for fs in scaled}
        for lo in range(0, len(store), block):
            sl = slice(lo, min(lo + block, len(store)))
            keep = valid[sl]
            for fs in scaled:
                moments[fs.name].add(fs.read(sl)[1][keep])
        stats = {name: m.result() for name, m in moments.items()}
    return Source(store.location, tuple(features), stats, block), rows


class _Moments:
    """Mean and standard deviation accumulated block by block (Chan et al.'s pairwise update)."""

    def __init__(self, dim: int):
        self.n, self.mean, self.m2 = 0, np.zeros(dim), np.zeros(dim)

    def add(self, x: np.ndarray) -> None:
        if not len(x):
            return
        x = x.astype(np.float64)
        n, mean = len(x), x.mean(0)
        m2 = ((x - mean) ** 2).sum(0)
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta**2 * self.n * n / total
        self.n = total

    def result(self) -> dict[str, list[float]]:
        std = np.sqrt(self.m2 / max(self.n, 1))
        return {"mean": self.mean.astype(np.float32).tolist(),
                "std": np.where(std < 1e-6, 1.0, std).astype(np.float32).tolist()}


def sample(source: Source, store: Store, rows: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Vectors of ``size`` rows drawn uniformly from ``rows``, read block by block (pass 2)."""
    chosen = np.sort(np.random.default_rng(seed).choice(rows, size=min(size, len(rows)), replace=False))
    out, at = None, 0
    for lo in range(0, len(store), source.block_rows):
        hi = min(lo + source.block_rows, len(store))
        a, b = np.searchsorted(chosen, [lo, hi])
        for _, vectors in (source.blocks(store, lo, hi, wanted=chosen[a:b]) if a < b else ()):
            if out is None:
                out = np.empty((len(chosen), vectors.shape[1]), np.float32)
            out[at:at + len(vectors)] = vectors
            at += len(vectors)
    assert out is not None and at == len(chosen)
    return out


def shard_ranges(n_store_rows: int, shards: int, block: int) -> list[tuple[int, int]]:
    """``shards`` contiguous row ranges, cut at block boundaries (so no chunk is read twice)."""
    blocks = -(-n_store_rows // block)
    cuts = [min(n_store_rows, round(i * blocks / shards) * block) for i in range(shards + 1)]
    return list(itertools.pairwise(cuts))


def target(empty: Any, kind: str, shards: int) -> Any:
    """What one shard fills: the index itself (one shard), a copy of it, or for HNSW served as
    shards a copy wrapped in ``IndexIDMap2`` (its ids are positions among all indexed rows)."""
    faiss = _faiss()
    if shards == 1:
        return empty
    if kind == "hnsw":
        return faiss.IndexIDMap2(faiss.clone_index(empty))
    return faiss.clone_index(empty)


def fill(source: Source, index: Any, start: int, stop: int, first_id: int, store: Store | None = None,
         advance: Callable[[int], Any] | None = None) -> Any:
    """Add the valid rows of ``[start, stop)`` to ``index``. Flat and single HNSW indexes number
    vectors in order; IVF and IDMap indexes get explicit ids: positions from ``first_id`` on."""
    faiss = _faiss()
    store = store or source.open()
    explicit = isinstance(index, faiss.IndexIDMap2) or faiss.try_extract_index_ivf(index) is not None
    next_id = first_id
    for _, vectors in source.blocks(store, start, stop):
        if explicit:
            index.add_with_ids(vectors, np.arange(next_id, next_id + len(vectors), dtype=np.int64))
        else:
            index.add(vectors)
        next_id += len(vectors)
        if advance is not None:
            advance(len(vectors))
    return index


def _fill_task(source: Source, blob: np.ndarray, kind: str, shards: int, start: int, stop: int,
               first_id: int) -> np.ndarray:
    """Cluster task: fill one shard from the store and send it back serialised."""
    faiss = _faiss()
    index = target(faiss.deserialize_index(blob), kind, shards)
    return faiss.serialize_index(fill(source, index, start, stop, first_id))


def store_vectors(store: Store, features: list[str]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Rows valid in every feature set, their cosine-ready concatenated vectors, and the
    standardisation applied to the feature sets that need it (see :mod:`emostore.search.build`).
    All in memory: for large stores, :func:`emostore.search.build.build_streaming` streams."""
    source, rows = plan(store, features)
    vectors = np.concatenate([v for _, v in source.blocks(store, 0, len(store))])
    return rows, vectors, source.stats


def build_for_store(store: Store, features: list[str], *, kind: str = "flat", checkpoint: Path | None = None,
                    shards: int = 1, cluster: Any = None, train_size: int | None = None, progress: bool = False,
                    **params: Any) -> NearestIndex:
    """Index a store: its feature sets streamed chunk by chunk (:func:`build_streaming`), or a
    checkpoint's embeddings (computed in memory, like training)."""
    if checkpoint is None:
        return build_streaming(store, features, kind=kind, shards=shards, cluster=cluster, train_size=train_size,
                               progress=progress, **params)
    from emostore.search.embed import checkpoint_vectors

    rows, vectors, extra = checkpoint_vectors(store, Path(checkpoint))
    features = extra["feature_sets"]
    return NearestIndex.build(vectors, rows, kind=kind, meta={**store_meta(store, features, rows), **extra}, **params)


def build_streaming(store: Store, features: list[str], *, kind: str = "flat", shards: int = 1,
                    cluster: Any = None, train_size: int | None = None, progress: bool = False,
                    **params: Any) -> NearestIndex:
    """Build an index over ``features`` of ``store`` without holding all of its vectors."""
    faiss = _faiss()
    if shards < 1:
        raise UserError("--shards must be at least 1")
    t0 = time.perf_counter()
    release_large_buffers()
    source, rows = plan(store, features)
    d = sum(store.feature_set(f).dim for f in features)
    empty, p = new_index(kind, d, len(rows), params)
    meta: dict[str, Any] = {**store_meta(store, features, rows), "standardisation": source.stats}
    if kind == "ivf":
        n_train = int(train_size or min(MAX_TRAIN, max(MIN_TRAIN, TRAIN_PER_LIST * int(p["nlist"]))))
        train = sample(source, store, rows, n_train)
        meta["notes"] = check_ivf_training(empty, len(train), p)
        empty.train(train)
        meta["train_size"] = len(train)
        del train
    ranges = shard_ranges(len(store), shards, source.block_rows)
    first_ids = [int(np.searchsorted(rows, a)) for a, _ in ranges]
    served = kind == "hnsw" and shards > 1
    with progress_bar(enabled=progress, transient=True) as bar:
        if cluster is None:
            task = bar.add_task(f"indexing {'+'.join(features)}", total=len(rows))
            parts: list[Any] = []
            for (a, b), first in zip(ranges, first_ids):
                part = fill(source, target(empty, kind, shards), a, b, first, store=store,
                            advance=functools.partial(bar.advance, task))
                _collect(parts, part, served)
        else:
            task = bar.add_task(f"index shards of {'+'.join(features)}", total=len(ranges))
            parts = _fill_on_cluster(cluster, source, empty, kind, shards, ranges, first_ids, served, progress,
                                     advance=functools.partial(bar.advance, task))
    if served:
        index = faiss.IndexShards(d, False, False)
        for sub in parts:
            index.add_shard(sub)
    else:
        index = parts[0]
    meta.update({"kind": kind, "params": p, "dim": int(d), "n_vectors": int(index.ntotal), "shards": shards,
                 "served_shards": len(parts) if served else 0, "block_rows": source.block_rows,
                 "build_seconds": round(time.perf_counter() - t0, 3), "created": now(), "faiss": faiss.__version__})
    return NearestIndex(index, rows.astype(np.int64), meta, shards=parts if served else [])


def _collect(parts: list[Any], part: Any, served: bool) -> None:
    """Keep ``part`` as a shard, or merge it into the first part: in order, flat vectors continue the
    numbering and IVF lists grow exactly as in a single build (their ids are explicit)."""
    if served or not parts:
        parts.append(part)
    else:
        parts[0].merge_from(part, 0)


def _fill_on_cluster(cluster: Any, source: Source, empty: Any, kind: str, shards: int,
                     ranges: list[tuple[int, int]], first_ids: list[int], served: bool, progress: bool,
                     advance: Callable[[int], Any]) -> list[Any]:
    from emostore.cluster import RETRIES, connect

    faiss = _faiss()
    parts: list[Any] = []
    with connect(cluster, quiet=not progress) as client:
        blob = client.scatter(faiss.serialize_index(empty), broadcast=True)
        futures = [client.submit(_fill_task, source, blob, kind, shards, a, b, first, retries=RETRIES, pure=False)
                   for (a, b), first in zip(ranges, first_ids)]
        try:
            for fut in futures:  # in order, as in a single build
                _collect(parts, faiss.deserialize_index(fut.result()), served)
                fut.release()
                advance(1)
        finally:
            client.cancel(futures)
    return parts
