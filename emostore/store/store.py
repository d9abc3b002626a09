"""A store: one directory per corpus holding the utterance table and its feature sets (Zarr 3).

Layout::

    STORE/
      zarr.json                       root attributes: emostore version, dataset, created
      table/<column>                  one 1-D array per column of the utterance table
      features/<modality>/<name>/     values [N, D] float32, done [N], mask [N], error [N] str
"""

from __future__ import annotations

import fcntl
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from emostore import __version__
from emostore.errors import UserError
from emostore.store.feature_set import FeatureSet, config_hash, default_chunk_rows, now
from emostore.store.table import read_table, write_table

LOCK_FILE = ".emostore.lock"


class StoreNotFound(UserError):
    pass


class ConfigMismatch(UserError):
    pass


class StoreDamaged(UserError):
    pass


class Store:
    """Open with :meth:`open`, create with :meth:`create`."""

    def __init__(self, path: Path, root: zarr.Group):
        self.path = path
        self.root = root
        self._table: pd.DataFrame | None = None
        self._ids: np.ndarray | None = None

    # ----- lifecycle ---------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, table: pd.DataFrame, *, dataset: str,
               table_attrs: dict[str, Any] | None = None, overwrite: bool = False) -> Store:
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            if not overwrite:
                raise UserError(f"{path} already exists; pass --overwrite to replace it")
            if not (path / "zarr.json").exists():
                raise UserError(f"{path} exists and is not an emostore store; refusing to delete it")
            shutil.rmtree(path)
        if table["id"].duplicated().any():
            raise UserError(f"{path}: the utterance table has duplicate ids")
        root = zarr.open_group(str(path), mode="w")
        root.attrs.update({"emostore_version": __version__, "dataset": dataset, "created": now(),
                           "n_rows": len(table)})
        write_table(root.create_group("table"), table, table_attrs or {})
        root.create_group("features")
        return cls(path, root)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r+") -> Store:
        path = Path(path)
        if not (path / "zarr.json").exists() or not (path / "table").exists():
            raise StoreNotFound(f"{path} is not an emostore store (no zarr.json/table); "
                                "create one with `emostore ingest ...`")
        store = cls(path, zarr.open_group(str(path), mode=mode))
        store.check_layout()
        return store

    def check_layout(self) -> None:
        """Refuse, in one line, a store whose groups or table columns were removed or damaged."""
        for group in ("table", "features"):
            if not isinstance(self.root.get(group), zarr.Group):
                raise StoreDamaged(f"{self.path} is damaged: its {group} group is missing; re-create the store "
                                   "with `emostore ingest ... --overwrite`")
        table = self.root["table"]
        columns = table.attrs.get("columns")
        if not isinstance(columns, list):
            raise StoreDamaged(f"{self.path} is damaged: the table's attributes do not list its columns")
        have = set(table.array_keys())
        for col in columns:
            if col not in have:
                raise StoreDamaged(f"{self.path} is damaged: table column {col!r} is missing")

    @contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive inter-process lock for metadata changes (feature set creation, attrs)."""
        with open(self.path / LOCK_FILE, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ----- the table ---------------------------------------------------------------------
    @property
    def table(self) -> pd.DataFrame:
        if self._table is None:
            self._table = read_table(self.root["table"])
        return self._table

    @property
    def table_attrs(self) -> dict[str, Any]:
        return dict(self.root["table"].attrs)

    @property
    def ids(self) -> np.ndarray:
        if self._ids is None:
            self._ids = np.array(self.root["table"]["id"][:].tolist(), dtype=object)
        return self._ids

    def __len__(self) -> int:
        return int(self.root.attrs["n_rows"])

    @property
    def dataset(self) -> str:
        return str(self.root.attrs.get("dataset", ""))

    # ----- feature sets ------------------------------------------------------------------
    def feature_sets(self) -> list[str]:
        names = []
        feats = self.root["features"]
        for modality in sorted(feats.group_keys()):
            for name in sorted(feats[modality].group_keys()):
                names.append(f"{modality}/{name}")
        return names

    def has_feature_set(self, name: str) -> bool:
        return name in self.feature_sets()

    def feature_set(self, name: str) -> FeatureSet:
        if "/" not in name:  # allow the modality alone when it has exactly one feature set
            matches = [n for n in self.feature_sets() if n.split("/", 1)[0] == name]
            if len(matches) == 1:
                name = matches[0]
            elif len(matches) > 1:
                raise UserError(f"{name!r} is ambiguous in {self.path}: name one of {', '.join(matches)}")
        if not self.has_feature_set(name):
            have = ", ".join(self.feature_sets()) or "none"
            raise UserError(f"{self.path}: no feature set {name!r} (have: {have}); "
                            f"run `emostore extract` first")
        return FeatureSet(self.root["features"][name], name, self.ids)

    def create_feature_set(self, name: str, *, dim: int, config: dict[str, Any], encoder: str,
                           version: dict[str, str], chunk_rows: int | None = None,
                           seq_dim: int | None = None, overwrite: bool = False) -> FeatureSet:
        """Create ``name`` or reopen it when its configuration matches; refuse a different one.

        Safe to call from several processes at once (shards): creation runs under the store lock.
        """
        if name.count("/") != 1 or not all(name.split("/")):
            raise UserError(f"feature set names look like <modality>/<name>, got {name!r}")
        h = config_hash(config)
        with self.lock():
            feats = self.root["features"]
            if self.has_feature_set(name):
                fs = FeatureSet(feats[name], name, self.ids)
                if fs.config_hash == h and fs.dim == dim and not overwrite:
                    return fs
                if not overwrite:
                    raise ConfigMismatch(
                        f"{self.path}: feature set {name!r} was computed with another configuration "
                        f"(stored {fs.config_hash}: {fs.config}; asked {h}: {config}). "
                        f"Pass --overwrite to replace it, or --name to write a new feature set.")
                del feats[name]
            n = len(self)
            rows = chunk_rows or default_chunk_rows(dim)
            g = feats.require_group(name.split("/")[0]).create_group(name.split("/")[1])
            g.create_array("values", shape=(n, dim), chunks=(rows, dim), dtype="float32", fill_value=np.nan)
            g.create_array("done", shape=(n,), chunks=(rows,), dtype=bool, fill_value=False)
            g.create_array("mask", shape=(n,), chunks=(rows,), dtype=bool, fill_value=False)
            g.create_array("error", shape=(n,), chunks=(rows,), dtype=str, fill_value="")
            if seq_dim:
                g.create_array("seq_lengths", shape=(n,), chunks=(rows,), dtype="int64", fill_value=0)
                g.create_group("seq")
                g.attrs["seq_dim"] = seq_dim
            stamp = now()
            g.attrs.update({"name": name, "encoder": encoder, "version": version, "dim": dim,
                            "dtype": "float32", "config": config, "config_hash": h,
                            "chunk_rows": rows, "created": stamp, "updated": stamp})
            return FeatureSet(g, name, self.ids)

    def touch_feature_set(self, name: str) -> None:
        """Record when a feature set was last written (under the lock: shards share the attrs)."""
        with self.lock():
            g = zarr.open_group(str(self.path / "features" / name), mode="r+")
            g.attrs["updated"] = now()

    def read(self, name: str, split: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids, X, mask)`` of a feature set, aligned to the table, optionally one split only."""
        fs = self.feature_set(name)
        if split is None:
            return fs.read()
        rows = np.flatnonzero(self.table["split"].to_numpy() == split)
        return fs.read(rows)

    # ----- summary -----------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        t = self.table
        ta = self.table_attrs

        def counts(col: str) -> dict[str, int]:
            return {str(k): int(v) for k, v in Counter(x for x in t[col] if x is not None).most_common()}

        labels_by_split = {s: {str(k): int(v) for k, v in Counter(
            x for x in t.loc[t["split"] == s, "emotion"] if x is not None).most_common()}
            for s in counts("split")}
        features = {}
        for name in self.feature_sets():
            fs = self.feature_set(name)
            features[name] = fs.summary()
            features[name]["errors"] = [{"row": r, "id": i, "reason": why} for r, i, why in fs.errors()[:20]]
        return {
            "path": str(self.path),
            "dataset": self.dataset,
            "utterances": len(t),
            "dialogues": int(t["dialogue"].nunique()),
            "speakers": int(t["speaker"].nunique()),
            "splits": counts("split"),
            "labels": counts("emotion"),
            "labels_by_split": labels_by_split,
            "sentiments": counts("sentiment"),
            "with_text": int(t["text"].notna().sum()),
            "with_media": int(t["media"].notna().sum()),
            "problems": len(ta.get("problems", [])),
            "repairs": len(ta.get("repairs", [])),
            "features": features,
            "created": self.root.attrs.get("created"),
            "emostore_version": self.root.attrs.get("emostore_version"),
        }
