"""FAISS indexes over a store's feature sets: build, save beside the store, load, query, staleness.

Vectors are cosine-ready: each feature set is L2-normalised on its own (so modalities weigh
the same), the parts concatenated and normalised again, and searched by inner product. Only rows
valid in every chosen feature set are indexed.

Saved inside the store as Zarr nodes, so that the same code works on a local disk and on object
storage (which has no rename), and plain ``zarr`` reads it::

    STORE/indexes/<name>/             group; attribute ``current``: the version in use
    STORE/indexes/<name>/<version>/   group; attributes: what it was built from (feature sets and
                                      their config hashes, the store's row count and id hash, the
                                      kind and its parameters); arrays ``rows`` (store row of each
                                      FAISS id) and ``faiss`` (the bytes of ``faiss.write_index``,
                                      FAISS's own format, no pickle; ``faiss-<i>`` per shard when
                                      an HNSW index is served as shards)

A build writes a new version completely, then replaces the group's ``zarr.json`` (one small
object, replaced whole: a rename on a local disk, a single PUT on an object store) to point at
it, then deletes versions older than the previous one. A reader reads the pointer first, so it
loads the old index or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

import emostore.store.arrays as arrays
from emostore.core.clock import now
from emostore.errors import UserError
from emostore.search import settings
from emostore.store import Store
from emostore.store.layout import INDEXES

KINDS = ("flat", "ivf", "hnsw")
DEFAULTS: dict[str, dict[str, Any]] = {
    "flat": {},
    "ivf": {"nlist": None, "nprobe": 16, "pq_m": 0},  # nlist None: about 4 * sqrt(N); pq_m > 0: IVF-PQ
    "hnsw": {"M": 32, "ef_construction": 80, "ef_search": 64},
}
#: Bytes per chunk of a saved FAISS index: one object-store request each.
BLOB_CHUNK = 8 * 1024 * 1024


class StaleIndex(UserError):
    """The index no longer matches its store (new rows, re-extracted features)."""


def _faiss() -> Any:
    return settings.faiss()


def ids_hash(ids: np.ndarray) -> str:
    """A short hash of the lines ``str(id)``, computed a block at a time."""
    return _lines_hash(ids[i:i + 8192] for i in range(0, len(ids), 8192))


def store_ids_hash(store: Store) -> str:
    """``ids_hash(store.ids)`` (computed once per store, see :meth:`Store.ids_hash`)."""
    return store.ids_hash()


def _lines_hash(blocks: Iterator[Any]) -> str:
    h = hashlib.sha256()
    for i, block in enumerate(blocks):
        h.update((("\n" if i else "") + "\n".join(map(str, block))).encode("utf-8"))
    return h.hexdigest()[:16]


def normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def combine(parts: list[np.ndarray], features: list[str] | None = None,
            stats: dict[str, dict[str, list[float]]] | None = None) -> np.ndarray:
    """Each part (z-scored when ``stats`` has it) L2-normalised, concatenated, normalised again.

    Works in place on one float32 copy of each part (index builds stream large blocks through
    here); the values are those of ``normalise`` applied step by step."""
    out = []
    for i, p in enumerate(parts):
        p = np.array(p, dtype=np.float32)
        s = (stats or {}).get(features[i]) if features else None
        if s is not None:
            p -= np.asarray(s["mean"], np.float32)
            p /= np.asarray(s["std"], np.float32)
        out.append(_normalise_in_place(p))
    return _normalise_in_place(out[0] if len(out) == 1 else np.concatenate(out, axis=1))


def _normalise_in_place(x: np.ndarray) -> np.ndarray:
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def default_name(features: list[str], checkpoint: Path | None = None) -> str:
    name = "+".join(f.replace("/", "-") for f in features)
    return f"{Path(checkpoint).name}-embedding" if checkpoint else name


def new_index(kind: str, d: int, n: int, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """An empty FAISS index of ``kind`` for ``n`` vectors of ``d`` dimensions, and its parameters."""
    faiss = _faiss()
    if kind not in KINDS:
        raise UserError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    p = {**DEFAULTS[kind], **{k: v for k, v in params.items() if v is not None}}
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, int(p["M"]), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(p["ef_construction"])
        index.hnsw.efSearch = int(p["ef_search"])
    else:
        nlist = int(p["nlist"] or max(1, min(n // 39, int(4 * np.sqrt(n)))))
        p["nlist"] = nlist
        quantizer = faiss.IndexFlatIP(d)
        if p["pq_m"]:
            if d % int(p["pq_m"]):
                raise UserError(f"--pq-m {p['pq_m']} must divide the dimension {d}")
            index = faiss.IndexIVFPQ(quantizer, d, nlist, int(p["pq_m"]), 8, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = int(p["nprobe"])
    return index, p


#: Training vectors FAISS wants per centroid (IVF list, or PQ code); with fewer it prints a raw warning.
MIN_PER_CENTROID = 39


def check_ivf_training(index: Any, n_train: int, params: dict[str, Any]) -> list[str]:
    """Before training an IVF ``index`` on ``n_train`` vectors: refuse fewer vectors than lists; for fewer
    than FAISS wants per list (or per PQ code), return one line saying what to do, in place of FAISS's
    own warning (silenced)."""
    nlist, pq_m = int(params["nlist"]), int(params.get("pq_m") or 0)
    fits = max(1, n_train // MIN_PER_CENTROID)
    if n_train < nlist:
        raise UserError(f"ivf: {n_train:,} training vectors cannot place {nlist:,} lists; use --nlist {fits:,} or "
                        "fewer, or leave --nlist out")
    notes = []
    if n_train < MIN_PER_CENTROID * nlist:
        notes.append(f"ivf: {n_train:,} training vectors for {nlist:,} lists, fewer than the {MIN_PER_CENTROID} per "
                     f"list that place them well; use --nlist {fits:,} or fewer (leaving it out picks about 4 x "
                     "sqrt(vectors)), or a bigger --train-size")
    if pq_m and n_train < MIN_PER_CENTROID * 256:
        notes.append(f"ivf: {n_train:,} training vectors for the 256 codes of each --pq-m sub-quantizer, fewer than "
                     f"{MIN_PER_CENTROID * 256:,}; use --pq-m 0 (IVF-Flat) on a store this small")
    for cp in (index.cp, *([index.pq.cp] if pq_m else [])):
        cp.min_points_per_centroid = 1  # said above, in one line
    return notes


@dataclass
class NearestIndex:
    """A FAISS index and what it covers. ``rows[i]`` is the store row of FAISS id ``i``.

    ``shards`` holds the sub-indexes when ``index`` is a ``faiss.IndexShards`` (HNSW built with
    ``--shards``): each is an ``IndexIDMap2`` whose ids are positions in ``rows``.
    """

    index: Any
    rows: np.ndarray
    meta: dict[str, Any]
    name: str | None = None
    where: str | None = None
    shards: list[Any] = field(default_factory=list, repr=False)
    _gpu: Any = field(default=None, repr=False)

    # ----- building ----------------------------------------------------------------------
    @classmethod
    def build(cls, vectors: np.ndarray, rows: np.ndarray, *, kind: str = "flat",
              meta: dict[str, Any] | None = None, **params: Any) -> NearestIndex:
        faiss = _faiss()
        n, d = vectors.shape
        before = settings.openmp_threads()
        settings.configure(d)
        t0 = time.perf_counter()
        index, p = new_index(kind, d, n, params)
        notes = check_ivf_training(index, n, p) if kind == "ivf" else []
        gpu = settings.to_gpu(index, kind)  # built on the GPU when there is one; the saved index is CPU either way
        target = gpu if gpu is not None else index
        if kind == "ivf":
            target.train(vectors)
        target.add(vectors)
        if gpu is not None:
            index = faiss.index_gpu_to_cpu(gpu)
        settings.restore(before)
        meta = {**(meta or {}), "kind": kind, "params": p, "dim": int(d), "n_vectors": int(n),
                "build_seconds": round(time.perf_counter() - t0, 3), "created": now(),
                "faiss": faiss.__version__, "notes": notes}
        return cls(index, np.asarray(rows, dtype=np.int64), meta, _gpu=gpu)

    # ----- persistence -------------------------------------------------------------------
    def save(self, store: Store, name: str) -> str:
        """Write a new version of index ``name`` into the store, then point ``name`` at it."""
        group = _indexes_group(store, create=True).require_group(name)
        _drop_old_layout(store, name)
        version = f"v{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        v = group.create_group(version, attributes=self.meta)
        rows = np.asarray(self.rows, dtype=np.int64)
        arrays.writable(arrays.create(v, "rows", shape=rows.shape, chunks=(max(1, min(len(rows), 1 << 20)),),
                                      dtype="int64", fill_value=-1))[:] = rows
        if self.shards:
            for i, sub in enumerate(self.shards):
                write_blob(v, f"faiss-{i}", sub)
        else:
            write_blob(v, "faiss", self.index)
        previous = group.attrs.get("current")
        group.attrs.update({"current": version, "updated": now()})  # the switch: one whole object
        current = _indexes_group(store)[name].attrs.get("current")
        for old in set(group.group_keys()) - {version, current, previous}:
            del group[old]
        self.name, self.where = name, store.location.child(INDEXES, name)
        return self.where

    @classmethod
    def load(cls, store: Store, name: str) -> NearestIndex:
        faiss = _faiss()
        where = store.location.child(INDEXES, name)
        rebuild = "rebuild it with `emostore index build`"
        group = _indexes_group(store)
        if group is None or name not in set(group.group_keys()) or not group[name].attrs.get("current"):
            raise UserError(f"{where}: no index here; {rebuild}")
        version = str(group[name].attrs["current"])
        try:
            v = group[name][version]
            meta = dict(v.attrs)
            rows = np.asarray(v["rows"][:], dtype=np.int64)
        except KeyError:
            raise UserError(f"{where}: version {version} is missing; {rebuild}") from None
        n_shards = int(meta.get("served_shards") or 0)
        try:
            if n_shards:
                subs = [read_blob(v[f"faiss-{i}"]) for i in range(n_shards)]
                index = faiss.IndexShards(subs[0].d, False, False)
                for sub in subs:
                    index.add_shard(sub)
            else:
                subs, index = [], read_blob(v["faiss"])
        except Exception as exc:  # noqa: BLE001  (FAISS raises RuntimeError on a corrupt file)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{where}: the FAISS index is corrupt or unreadable ({first}); {rebuild}") from None
        if index.ntotal != len(rows):
            raise UserError(f"{where}: index holds {index.ntotal} vectors but rows {len(rows)}; {rebuild}")
        return cls(index, rows, meta, name, where, subs, _gpu=settings.to_gpu(index, meta.get("kind", "flat")))

    # ----- staleness ---------------------------------------------------------------------
    def stale_reasons(self, store: Store) -> list[str]:
        """Why this index no longer matches ``store`` (empty when it still does)."""
        reasons = []
        m = self.meta
        if m.get("store_rows") != len(store) or m.get("store_ids_hash") != store_ids_hash(store):
            reasons.append(f"the store's rows changed ({m.get('store_rows')} -> {len(store)} rows)")
        for name, h in m.get("config_hashes", {}).items():
            if not store.has_feature_set(name):
                reasons.append(f"feature set {name} is gone")
                continue
            fs = store.feature_set(name)
            if fs.config_hash != h:
                reasons.append(f"{name} was re-extracted with another configuration ({h} -> {fs.config_hash})")
        if "checkpoint" in m:
            from emostore.search.embed import file_hash

            weights = Path(m["checkpoint"]) / "model.safetensors"
            if not weights.exists():
                reasons.append(f"checkpoint {m['checkpoint']} is gone")
            elif file_hash(weights) != m.get("checkpoint_hash"):
                reasons.append(f"checkpoint {m['checkpoint']} was retrained")
        if not reasons and "checkpoint" not in m:
            valid = np.ones(len(store), dtype=bool)
            for name in m.get("features", []):
                valid &= store.feature_set(name).mask()
            if ids_hash(np.flatnonzero(valid)) != m.get("valid_rows_hash"):
                reasons.append(f"rows with valid features changed ({len(self.rows)} indexed, "
                               f"{int(valid.sum())} now)")
        return reasons

    # ----- querying ----------------------------------------------------------------------
    def vector_of_row(self, row: int) -> np.ndarray:
        """The indexed vector of store ``row``."""
        pos = np.flatnonzero(self.rows == row)
        if not len(pos):
            raise UserError(f"store row {row} is not in this index (its features are missing)")
        if self.meta.get("kind") == "ivf":
            _faiss().extract_index_ivf(self.index).make_direct_map()
        for sub in self.shards:  # IDMap2 shards: ask the one holding this id
            ids = _faiss().vector_to_array(sub.id_map)
            if int(pos[0]) in set(ids.tolist()):
                return np.asarray(sub.reconstruct(int(pos[0])), dtype=np.float32)
        return np.asarray(self.index.reconstruct(int(pos[0])), dtype=np.float32)

    def search(self, queries: np.ndarray, k: int, allowed_rows: np.ndarray | None = None,
               **params: Any) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (similarities, store rows) per query; rows -1 where fewer were found.

        ``allowed_rows`` restricts the answer to those store rows (split or label filters).
        """
        q = normalise(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
        if q.shape[1] != self.index.d:
            raise UserError(f"query has {q.shape[1]} dimensions, the index {self.index.d}")
        before = settings.openmp_threads()
        try:
            return self._search(q, k, allowed_rows, settings.configure(self.index.d), **params)
        finally:
            settings.restore(before)

    def _search(self, q: np.ndarray, k: int, allowed_rows: np.ndarray | None, threads: int,
                **params: Any) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        kind = self.meta.get("kind", "flat")
        p = {**self.meta.get("params", {}), **{k2: v for k2, v in params.items() if v is not None}}
        sel = None
        if allowed_rows is not None:
            ids = np.flatnonzero(np.isin(self.rows, allowed_rows)).astype(np.int64)
            if len(ids) == 0:
                return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
            sel = faiss.IDSelectorBatch(ids)
        if kind == "ivf":
            sp = faiss.SearchParametersIVF(sel=sel, nprobe=int(p.get("nprobe", 16)))
        elif kind == "hnsw":
            sp = faiss.SearchParametersHNSW(sel=sel, efSearch=int(max(p.get("ef_search", 64), k)))
        else:
            sp = faiss.SearchParameters(sel=sel) if sel is not None else None
        index = self._gpu if (self._gpu is not None and sel is None) else self.index
        if kind == "flat" and index is self.index and sel is None and len(q) == 1 and threads > 1 \
                and hasattr(index, "get_xb"):
            sims, ids = settings.flat_single_query(index, q, k)  # FAISS gives one query one thread
        else:
            sims, ids = index.search(q, k, params=sp) if sp is not None else index.search(q, k)
        rows = np.where(ids >= 0, self.rows[np.maximum(ids, 0)], -1)
        return sims, rows


def store_meta(store: Store, features: list[str], rows: np.ndarray) -> dict[str, Any]:
    """What an index over ``features`` of ``store`` was built from (for staleness checks)."""
    return {
        "features": features,
        "config_hashes": {f: store.feature_set(f).config_hash for f in features},
        "store_rows": len(store),
        "store_ids_hash": store_ids_hash(store),
        "valid_rows_hash": ids_hash(rows),
    }


def list_indexes(store: Store) -> list[str]:
    group = _indexes_group(store)
    if group is None:
        return []
    return sorted(name for name, g in group.groups() if g.attrs.get("current"))


def index_meta(store: Store, name: str) -> dict[str, Any]:
    """What index ``name`` was built from (its current version's attributes), without reading it."""
    group = _indexes_group(store)
    if group is None or name not in set(group.group_keys()):
        return {}
    current = group[name].attrs.get("current")
    return dict(group[name][str(current)].attrs) if current in set(group[name].group_keys()) else {}


def _indexes_group(store: Store, create: bool = False) -> zarr.Group | None:
    if create:
        return zarr.open_group(store.location.zarr_store(), path=INDEXES, mode="a")
    if not store.location.exists(f"{INDEXES}/zarr.json"):
        return None
    return zarr.open_group(store.location.zarr_store(read_only=True), path=INDEXES, mode="r")


def _drop_old_layout(store: Store, name: str) -> None:
    """Indexes of emostore 0.1 were three plain files in ``indexes/<name>/``; they are replaced."""
    for old in ("index.faiss", "rows.npy", "index.json"):
        key = store.location.key(f"{INDEXES}/{name}/{old}")
        if store.location.fs.exists(key):
            store.location.fs.rm(key)


def write_blob(group: zarr.Group, key: str, index: Any) -> None:
    """Save ``index`` as a uint8 array, through a temporary file: memory stays at the index plus one chunk."""
    faiss = _faiss()
    with tempfile.TemporaryDirectory(prefix="emostore-index-") as tmp:
        path = os.path.join(tmp, "index.faiss")
        faiss.write_index(index, path)
        size = os.path.getsize(path)
        arr = arrays.writable(arrays.create(group, key, shape=(size,), chunks=(min(size, BLOB_CHUNK),),
                                            dtype="uint8", fill_value=0, compressors=arrays.CHECKSUM_ONLY))
        with open(path, "rb") as fh:
            for start, piece in _pieces(fh):
                arr[start:start + len(piece)] = np.frombuffer(piece, dtype=np.uint8)


def read_blob(arr: zarr.Array) -> Any:
    faiss = _faiss()
    with tempfile.TemporaryDirectory(prefix="emostore-index-") as tmp:
        path = os.path.join(tmp, "index.faiss")
        with open(path, "wb") as fh:
            fh.writelines(np.asarray(arr[start:start + BLOB_CHUNK], dtype=np.uint8).tobytes()
                          for start in range(0, arr.shape[0], BLOB_CHUNK))
        return faiss.read_index(path)


def _pieces(fh: Any) -> Iterator[tuple[int, bytes]]:
    start = 0
    while piece := fh.read(BLOB_CHUNK):
        yield start, piece
        start += len(piece)
