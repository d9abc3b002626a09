"""FAISS indexes over a store's feature sets: build, save beside the store, load, query, staleness.

Vectors are cosine-ready: each feature set is L2-normalised on its own (so modalities weigh
the same), the parts concatenated and normalised again, and searched by inner product. Only rows
valid in every chosen feature set are indexed.

Saved under ``STORE/indexes/<name>/``: ``index.faiss`` (FAISS's own format, no pickle),
``rows.npy`` (store rows covered, loaded without pickle) and ``index.json`` (what it was built
from: feature sets and their config hashes, the store's row count and id hash, the kind and its
parameters).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emostore.errors import UserError
from emostore.search import settings
from emostore.store import Store
from emostore.store.feature_set import now

KINDS = ("flat", "ivf", "hnsw")
DEFAULTS: dict[str, dict[str, Any]] = {
    "flat": {},
    "ivf": {"nlist": None, "nprobe": 16, "pq_m": 0},  # nlist None: about 4 * sqrt(N); pq_m > 0: IVF-PQ
    "hnsw": {"M": 32, "ef_construction": 80, "ef_search": 64},
}


class StaleIndex(UserError):
    """The index no longer matches its store (new rows, re-extracted features)."""


def _faiss() -> Any:
    return settings.faiss()


def ids_hash(ids: np.ndarray) -> str:
    return hashlib.sha256("\n".join(map(str, ids)).encode("utf-8")).hexdigest()[:16]


def normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def store_vectors(store: Store, features: list[str]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Rows valid in every feature set, their cosine-ready concatenated vectors, and the
    standardisation applied to the feature sets that need it (see :func:`standardisation`)."""
    parts, valid = [], np.ones(len(store), dtype=bool)
    for name in features:
        _, X, mask = store.feature_set(name).read()
        parts.append(X)
        valid &= mask
    rows = np.flatnonzero(valid)
    if len(rows) == 0:
        raise UserError(f"{store.path}: no row has valid {' + '.join(features)} features to index")
    stats = {name: standardisation(X[rows]) for name, X in zip(features, parts)
             if not name.startswith("text/")}
    return rows, combine([p[rows] for p in parts], features, stats), stats


def standardisation(X: np.ndarray) -> dict[str, list[float]]:
    """Acoustic and facial features mix scales (Hz, dB, ratios): without a z-score the largest
    dominate every cosine. Text embeddings are made for cosine as they are."""
    std = X.std(0)
    return {"mean": X.mean(0).tolist(), "std": np.where(std < 1e-6, 1.0, std).tolist()}


def combine(parts: list[np.ndarray], features: list[str] | None = None,
            stats: dict[str, dict[str, list[float]]] | None = None) -> np.ndarray:
    """Each part (z-scored when ``stats`` has it) L2-normalised, concatenated, normalised again."""
    out = []
    for i, p in enumerate(parts):
        s = (stats or {}).get(features[i]) if features else None
        if s is not None:
            p = (p - np.asarray(s["mean"], np.float32)) / np.asarray(s["std"], np.float32)
        out.append(normalise(p))
    return normalise(np.concatenate(out, axis=1))


def default_name(features: list[str], checkpoint: Path | None = None) -> str:
    name = "+".join(f.replace("/", "-") for f in features)
    return f"{Path(checkpoint).name}-embedding" if checkpoint else name


@dataclass
class NearestIndex:
    """A FAISS index and what it covers. ``rows[i]`` is the store row of FAISS id ``i``."""

    index: Any
    rows: np.ndarray
    meta: dict[str, Any]
    path: Path | None = None
    _gpu: Any = field(default=None, repr=False)

    # ----- building ----------------------------------------------------------------------
    @classmethod
    def build(cls, vectors: np.ndarray, rows: np.ndarray, *, kind: str = "flat",
              meta: dict[str, Any] | None = None, **params: Any) -> NearestIndex:
        faiss = _faiss()
        if kind not in KINDS:
            raise UserError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
        p = {**DEFAULTS[kind], **{k: v for k, v in params.items() if v is not None}}
        n, d = vectors.shape
        before = settings.openmp_threads()
        settings.configure(d)
        t0 = time.perf_counter()
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
                "faiss": faiss.__version__}
        return cls(index, np.asarray(rows, dtype=np.int64), meta, _gpu=gpu)

    @classmethod
    def build_for_store(cls, store: Store, features: list[str], *, kind: str = "flat",
                        checkpoint: Path | None = None, **params: Any) -> NearestIndex:
        if checkpoint is not None:
            from emostore.search.embed import checkpoint_vectors

            rows, vectors, extra = checkpoint_vectors(store, Path(checkpoint))
            features = extra["feature_sets"]
        else:
            rows, vectors, stats = store_vectors(store, features)
            extra = {"standardisation": stats}
        meta = {
            "features": features,
            "config_hashes": {f: store.feature_set(f).config_hash for f in features},
            "store_rows": len(store),
            "store_ids_hash": ids_hash(store.ids),
            "valid_rows_hash": ids_hash(rows),
            **extra,
        }
        return cls.build(vectors, rows, kind=kind, meta=meta, **params)

    # ----- persistence -------------------------------------------------------------------
    def save(self, directory: Path) -> Path:
        faiss = _faiss()
        directory = Path(directory)
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        faiss.write_index(self.index, str(tmp / "index.faiss"))
        np.save(tmp / "rows.npy", self.rows, allow_pickle=False)
        (tmp / "index.json").write_text(json.dumps(self.meta, indent=2))
        shutil.rmtree(directory, ignore_errors=True)
        tmp.rename(directory)  # a reader sees the old index or the new one, never half of one
        self.path = directory
        return directory

    @classmethod
    def load(cls, directory: Path) -> NearestIndex:
        faiss = _faiss()
        directory = Path(directory)
        rebuild = "rebuild it with `emostore index build`"
        try:
            meta = json.loads((directory / "index.json").read_text())
            rows = np.load(directory / "rows.npy", allow_pickle=False)
        except FileNotFoundError:
            raise UserError(f"{directory}: no index here; {rebuild}") from None
        except (ValueError, OSError) as exc:
            raise UserError(f"{directory}: index metadata unreadable ({exc}); {rebuild}") from None
        try:
            index = faiss.read_index(str(directory / "index.faiss"))
        except Exception as exc:  # noqa: BLE001  (FAISS raises RuntimeError on a corrupt file)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{directory / 'index.faiss'} is corrupt or unreadable ({first}); {rebuild}") from None
        if index.ntotal != len(rows):
            raise UserError(f"{directory}: index holds {index.ntotal} vectors but rows.npy {len(rows)}; {rebuild}")
        return cls(index, rows, meta, directory, _gpu=settings.to_gpu(index, meta.get("kind", "flat")))

    # ----- staleness ---------------------------------------------------------------------
    def stale_reasons(self, store: Store) -> list[str]:
        """Why this index no longer matches ``store`` (empty when it still does)."""
        reasons = []
        m = self.meta
        if m.get("store_rows") != len(store) or m.get("store_ids_hash") != ids_hash(store.ids):
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
            sims, ids = settings.sliced_flat_search(index, q, k, threads)  # FAISS gives one query one thread
        else:
            sims, ids = index.search(q, k, params=sp) if sp is not None else index.search(q, k)
        rows = np.where(ids >= 0, self.rows[np.maximum(ids, 0)], -1)
        return sims, rows


def index_dir(store: Store, name: str) -> Path:
    return store.path / "indexes" / name


def list_indexes(store: Store) -> list[str]:
    root = store.path / "indexes"
    return sorted(p.name for p in root.iterdir() if (p / "index.json").exists()) if root.exists() else []
