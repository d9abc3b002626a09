"""A store: one directory (or object-store prefix) per corpus holding the utterance table and
its feature sets (Zarr 3).

Layout::

    STORE/
      zarr.json                       root attributes: emostore version, dataset, created
      table/<column>                  one 1-D array per column of the utterance table
      features/<modality>/<name>/     values [N, D] float32, done [N], mask [N], error [N] str
      indexes/<name>/                 search indexes (see emostore.search.index)

STORE is a path or a URL (``s3://bucket/prefix``, ``gs://...``, ``file://...``); see
:mod:`emostore.store.location`. Every file in it is a Zarr node, so plain ``zarr`` reads the whole
store without warnings. There are no lock files: object stores have no locks, and creating a
feature set relies instead on a create-if-absent write of its metadata (one winner).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import zarr

import emostore.store.arrays as arrays
from emostore import __version__
from emostore.core.clock import now
from emostore.core.hashing import config_hash
from emostore.errors import UserError
from emostore.store.feature_set import FeatureSet, StoreDamaged, default_chunk_rows
from emostore.store.layout import INDEXES
from emostore.store.location import Location
from emostore.store.table import read_codes, read_rows, read_table, table_summary, write_table

T = TypeVar("T")


class StoreNotFound(UserError):
    pass


class ConfigMismatch(UserError):
    pass


class Store:
    """Open with :meth:`open`, create with :meth:`create`."""

    def __init__(self, location: Location, root: zarr.Group):
        self.location = location
        self.root = root
        self._table: pd.DataFrame | None = None
        self._ids: np.ndarray | None = None

    @property
    def url(self) -> str:
        """Where the store is, as given (a path or a URL): what messages show."""
        return self.location.url

    @property
    def path(self) -> Path:
        """The store's directory (stores on the local disk only)."""
        if self.location.local_path is None:
            raise UserError(f"{self.url} is on object storage, not a local directory")
        return self.location.local_path

    # ----- lifecycle ---------------------------------------------------------------------
    @classmethod
    def create(cls, where: str | Path | Location, table: pd.DataFrame | Iterable[pd.DataFrame], *, dataset: str,
               table_attrs: dict[str, Any] | None = None, overwrite: bool = False,
               n_rows: int | None = None) -> Store:
        """A new store holding ``table``: a DataFrame, or blocks of rows (``n_rows`` in all, ids
        unique across them: only each block's are checked) written one at a time."""
        loc = Location.parse(where)
        loc.check_container()
        if loc.has_content():
            if not overwrite:
                raise UserError(f"{loc} already exists; pass --overwrite to replace it")
            if not loc.exists("zarr.json"):
                raise UserError(f"{loc} exists and is not an emostore store; refusing to delete it")
            loc.remove()
        n = len(table) if isinstance(table, pd.DataFrame) else int(n_rows or 0)
        if isinstance(table, pd.DataFrame) and table["id"].duplicated().any():
            raise UserError(f"{loc}: the utterance table has duplicate ids")
        root = zarr.open_group(loc.zarr_store(), mode="w")
        root.attrs.update({"emostore_version": __version__, "dataset": dataset, "created": now(), "n_rows": n})
        write_table(root.create_group("table"), table, table_attrs or {}, n_rows=n)
        root.create_group("features")
        return cls(loc, root)

    @classmethod
    def open(cls, where: str | Path | Location, mode: str = "r+") -> Store:
        loc = Location.parse(where)
        if not loc.exists("zarr.json") or not loc.exists("table/zarr.json"):
            raise StoreNotFound(f"{loc} is not an emostore store (no zarr.json/table); "
                                "create one with `emostore ingest ...`")
        try:
            store = cls(loc, zarr.open_group(loc.zarr_store(read_only=mode == "r"), mode=mode))
            store.check_layout()
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001  (bad JSON in zarr.json, an unreachable object store)
            raise _open_error(loc, exc) from None
        return store

    def check_layout(self) -> None:
        """Refuse, in one line, a store whose groups or table columns were removed or damaged."""
        for group in ("table", "features"):
            if not isinstance(self.root.get(group), zarr.Group):
                raise StoreDamaged(f"{self.url} is damaged: its {group} group is missing; re-create the store "
                                   "with `emostore ingest ... --overwrite`")
        table = self.root["table"]
        columns = table.attrs.get("columns")
        if not isinstance(columns, list):
            raise StoreDamaged(f"{self.url} is damaged: the table's attributes do not list its columns")
        base = self.location.key("table")
        have = {str(p)[len(base) + 1:].split("/")[0] for p in self.location.fs.glob(f"{base}/*/zarr.json")}
        for col in columns:
            if col not in have:
                raise StoreDamaged(f"{self.url} is damaged: table column {col!r} is missing; it cannot be "
                                   "recomputed: ingest the corpus again (`emostore ingest ... --overwrite`)")

    # ----- the table ---------------------------------------------------------------------
    @property
    def table(self) -> pd.DataFrame:
        if self._table is None:
            try:
                table = read_table(self.root["table"])
            except Exception as exc:  # noqa: BLE001  (a damaged column: name it)
                raise self._table_damage(exc) from None
            self._check_table_chunks()
            self._table = table
        return self._table

    def columns(self, names: list[str]) -> pd.DataFrame:
        """Only these columns of the table (the whole table when it is already loaded)."""
        if self._table is not None:
            return self._table[names]
        return self._checked(lambda: read_table(self.root["table"], names), names)

    def codes(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """``(codes, categories)`` of a string column (see :func:`emostore.store.table.read_codes`)."""
        return self._checked(lambda: read_codes(self.root["table"], column), [column])

    def rows(self, rows: np.ndarray, columns: list[str]) -> pd.DataFrame:
        """Some rows of some columns, reading only the chunks that hold them."""
        if self._table is not None:
            return self._table[columns].iloc[np.asarray(rows, dtype=np.int64)].reset_index(drop=True)
        return self._checked(lambda: read_rows(self.root["table"], rows, columns), columns)

    def _checked(self, read: Callable[[], T], columns: list[str]) -> T:
        """``read()`` of some table columns, damage named as for the whole table."""
        try:
            out = read()
        except Exception as exc:  # noqa: BLE001  (a damaged column: name it)
            raise self._table_damage(exc) from None
        self._check_table_chunks(columns)
        return out

    def _check_table_chunks(self, columns: list[str] | None = None) -> None:
        """Decoding checked every stored chunk's checksum; a chunk file that is gone would read
        as fill values: check that each one is there (one listing per column)."""
        if self.table_damage(checksums=False, columns=columns):
            raise self._table_damage(RuntimeError("a chunk is missing"))

    def table_damage(self, *, checksums: bool = True,
                     columns: list[str] | None = None) -> list[tuple[str, int | None, str]]:
        """``(column, chunk or None, problem)`` for every damaged part of the utterance table (or of
        some of its ``columns``):
        metadata that cannot be read, chunks missing (tables written with every chunk stored) or
        failing their checksum (``checksums``: the stored bytes are read)."""
        try:
            group = self.root["table"]
            columns = list(columns or group.attrs["columns"])
        except Exception as exc:  # noqa: BLE001
            return [("table", None, f"its metadata cannot be read ({type(exc).__name__})")]
        expect_all = bool(group.attrs.get(arrays.INTEGRITY))
        out: list[tuple[str, int | None, str]] = []
        for col in columns:
            try:
                arr = group[col]
            except Exception as exc:  # noqa: BLE001
                out.append((col, None, f"the column cannot be opened ({type(exc).__name__})"))
                continue
            out += [(col, s.index, s.problem) for s in
                    arrays.check_chunks(self.location, f"table/{col}", arr, expect_all=expect_all, checksums=checksums)]
        return out

    def _table_damage(self, exc: BaseException) -> StoreDamaged:
        """The one line for a table that cannot be read: which column and chunk, and what to do."""
        found = self.table_damage()
        what = (f"column {found[0][0]}" + (f" chunk {found[0][1]}" if found[0][1] is not None else "")
                + f": {found[0][2]}") if found else f"{type(exc).__name__}: {str(exc)[:80]}"
        return StoreDamaged(f"{self.url}: the utterance table is damaged ({what}); it cannot be recomputed: "
                            "ingest the corpus again (`emostore ingest ... --overwrite`)")

    @property
    def table_attrs(self) -> dict[str, Any]:
        return dict(self.root["table"].attrs)

    @property
    def ids(self) -> np.ndarray:
        if self._ids is None:
            self._ids = np.array(self.root["table"]["id"][:].tolist(), dtype=object)
        return self._ids

    def ids_of(self, rows: np.ndarray) -> np.ndarray:
        """The ids of some rows, reading only the chunks that hold them."""
        if self._ids is not None:
            return self._ids[rows]
        return np.array(np.asarray(self.root["table"]["id"].oindex[np.asarray(rows)]).tolist(), dtype=object)

    def ids_hash(self) -> str:
        """A short hash of all ids (lines ``str(id)``), to tell whether the rows changed. The table is
        written once, so it is computed once: kept in the table's attributes (with whether any id
        holds a space, for :meth:`find_id`) when the store is open for writing, read from there
        afterwards."""
        import hashlib

        table = self.root["table"]
        if "ids_hash" in table.attrs:
            return str(table.attrs["ids_hash"])
        h, spaced = hashlib.sha256(), False
        for i, block in enumerate(self.iter_ids()):
            text = "\n".join(map(str, block))
            spaced = spaced or re.search(r"[^\S\n]", text) is not None or text.count("\n") != len(block) - 1
            h.update((("\n" if i else "") + text).encode("utf-8"))
        digest = h.hexdigest()[:16]
        if not self.root.read_only:
            table.attrs.update({"ids_hash": digest, "ids_with_spaces": spaced})
        return digest

    def find_id(self, utterance: str) -> int | None:
        """The row of utterance id ``utterance`` (None: no such id), reading the ids a block at a time;
        a text with spaces is no id when the table has none with spaces (known from its summary)."""
        attrs = self.table_attrs
        spaced = (attrs.get("summary") or {}).get("ids_with_spaces", attrs.get("ids_with_spaces"))
        if spaced is False and any(c.isspace() for c in utterance):
            return None
        start = 0
        for block in self.iter_ids():
            hit = [i for i, v in enumerate(block) if v == utterance]
            if hit:
                return start + hit[0]
            start += len(block)
        return None

    def iter_ids(self, block: int = 8192) -> Iterator[list[str]]:
        """The utterance ids, a block at a time (without holding them all)."""
        if self._ids is not None:
            yield from (self._ids[i:i + block].tolist() for i in range(0, len(self._ids), block))
            return
        column = self.root["table"]["id"]
        for i in range(0, column.shape[0], block):
            yield [str(x) for x in column[i:i + block].tolist()]

    def __len__(self) -> int:
        return int(self.root.attrs["n_rows"])

    @property
    def dataset(self) -> str:
        return str(self.root.attrs.get("dataset", ""))

    # ----- feature sets ------------------------------------------------------------------
    def feature_sets(self) -> list[str]:
        """The feature sets, ``<modality>/<name>``; one still being created (its ``done`` array, made
        last, not there yet) is left out, and so is one whose metadata cannot be read (``info`` and
        ``verify`` name those, and reading one is refused in one line)."""
        base = self.location.key("features")
        with_done = {"/".join(str(p)[len(base) + 1:].split("/")[:2])
                     for p in self.location.fs.glob(f"{base}/*/*/done/zarr.json")}
        damaged = set(self.damaged_feature_sets())
        return [n for n in self.feature_set_names(include_damaged=True) if n in with_done and n not in damaged]

    def feature_set_names(self, *, include_damaged: bool = False) -> list[str]:
        """Every feature set group, from the store's listing (its metadata is not read)."""
        if not include_damaged:
            return self.feature_sets()
        base = self.location.key("features")
        found = self.location.fs.glob(f"{base}/*/*/zarr.json")
        return sorted("/".join(str(p)[len(base) + 1:].split("/")[:2]) for p in found)

    def damaged_feature_sets(self) -> list[str]:
        """Feature set groups whose metadata cannot be read."""
        bad = []
        for name in self.feature_set_names(include_damaged=True):
            try:
                self.root[f"features/{name}"].attrs["config_hash"]
            except Exception:  # noqa: BLE001
                bad.append(name)
        return bad

    def has_feature_set(self, name: str) -> bool:
        return name in self.feature_sets()

    def feature_set(self, name: str) -> FeatureSet:
        if "/" not in name:  # allow the modality alone when it has exactly one feature set
            matches = [n for n in self.feature_sets() if n.split("/", 1)[0] == name]
            if len(matches) == 1:
                name = matches[0]
            elif len(matches) > 1:
                raise UserError(f"{name!r} is ambiguous in {self.url}: name one of {', '.join(matches)}")
        if not self.has_feature_set(name):
            if name in self.damaged_feature_sets():
                raise StoreDamaged(f"{self.url}: the metadata of feature set {name} cannot be read; run "
                                   f"`emostore verify {self.url} --repair`, then extract it again")
            have = ", ".join(self.feature_sets()) or "none"
            raise UserError(f"{self.url}: no feature set {name!r} (have: {have}); "
                            f"run `emostore extract` first")
        return FeatureSet(self._group(f"features/{name}"), name, lambda: self.ids, self.url, self.location,
                          self.ids_of)

    def _group(self, path: str) -> zarr.Group:
        """A group of the store, or a one-line StoreDamaged when its metadata cannot be read."""
        try:
            return self.root[path]
        except KeyError:
            raise StoreDamaged(f"{self.url}: {path} is missing; run `emostore verify {self.url}`") from None
        except Exception as exc:  # noqa: BLE001  (bad JSON or bytes in its zarr.json)
            raise StoreDamaged(f"{self.url}: the metadata of {path} cannot be read ({type(exc).__name__}); run "
                               f"`emostore verify {self.url} --repair`") from None

    def create_feature_set(self, name: str, *, dim: int, config: dict[str, Any], encoder: str,
                           version: dict[str, str], chunk_rows: int | None = None,
                           seq_dim: int | None = None, layers: int | None = None,
                           overwrite: bool = False) -> FeatureSet:
        """Create ``name`` or reopen it when its configuration matches; refuse a different one.

        ``layers``: the vectors stack this many layers of ``dim / layers`` values (speech encoders).

        Safe for several writers at once, on a local disk or an object store, without locks: the
        feature set's metadata (``zarr.json``, holding the configuration) is written with a
        create-if-absent write, so exactly one writer creates it. The others read the winner's
        configuration: the same one is joined (its arrays are created if missing, which any
        writer may do since they follow from the metadata alone); another one is refused.
        """
        if name.count("/") != 1 or not all(name.split("/")):
            raise UserError(f"feature set names look like <modality>/<name>, got {name!r}")
        h = config_hash(config)
        if name in self.feature_set_names(include_damaged=True):
            if name in self.damaged_feature_sets():
                if not overwrite:
                    raise StoreDamaged(f"{self.url}: the metadata of feature set {name} cannot be read; run "
                                       f"`emostore verify {self.url} --repair` (or pass --overwrite)")
            else:
                fs = self._reopen(name, h, dim, config, overwrite)
                if fs is not None:
                    return fs
            self.location.fs.rm(self.location.key(f"features/{name}"), recursive=True)
        rows = chunk_rows or default_chunk_rows(dim)
        stamp = now()
        attrs = {"name": name, "encoder": encoder, "version": version, "dim": dim, "dtype": "float32",
                 "config": config, "config_hash": h, "chunk_rows": rows, "created": stamp, "updated": stamp,
                 arrays.INTEGRITY: arrays.INTEGRITY_VERSION,
                 **({"seq_dim": seq_dim} if seq_dim else {}),
                 **({"layers": int(layers)} if layers and layers > 1 else {})}
        with contextlib.suppress(zarr.errors.ContainsGroupError):  # another writer made the modality's group now
            self.root["features"].require_group(name.split("/")[0])
        if not self.location.create_exclusive(f"features/{name}/zarr.json", _group_document(attrs)):
            fs = self._reopen(name, h, dim, config, overwrite=False, racing=True)
            assert fs is not None
            return fs
        return self._complete(name)

    def _reopen(self, name: str, h: str, dim: int, config: dict[str, Any], overwrite: bool,
                racing: bool = False) -> FeatureSet | None:
        """The existing feature set when its configuration is ``h``; None to replace it."""
        g = self.root["features"][name]
        stored_hash = g.attrs.get("config_hash")
        if stored_hash == h and int(g.attrs.get("dim", -1)) == dim and not overwrite:
            return self._complete(name)
        if overwrite and not racing:
            return None
        who = "another writer created it at the same moment" if racing else "it was computed"
        stored = dict(g.attrs.get("config") or {})
        diff = [f"{k} {stored.get(k)!r} stored, {config.get(k)!r} asked" for k in sorted(set(stored) | set(config))
                if stored.get(k) != config.get(k)]
        hint = (f" (--precision {stored['precision']} resumes it)" if any(d.startswith("precision ") for d in diff)
                and isinstance(stored.get("precision"), str) else "")
        what = "; ".join(diff) or f"dimension {g.attrs.get('dim')} stored, {dim} asked"
        raise ConfigMismatch(
            f"{self.url}: feature set {name!r} exists with another configuration ({who} with config "
            f"{stored_hash}, asked {h}: {what}){hint}. Pass --overwrite to replace it, or --name to write a new "
            "feature set.")

    def _complete(self, name: str) -> FeatureSet:
        """Open feature set ``name``, creating whichever of its arrays are missing (idempotent)."""
        g = self._group(f"features/{name}")
        n, rows, dim = len(self), int(g.attrs["chunk_rows"]), int(g.attrs["dim"])
        base = self.location.key(f"features/{name}")
        have = {str(p)[len(base) + 1:].split("/")[0] for p in self.location.fs.glob(f"{base}/*/zarr.json")}
        specs: list[tuple[str, tuple[int, ...], tuple[int, ...], Any, Any]] = [
            ("values", (n, dim), (rows, dim), "float32", np.nan),
            ("mask", (n,), (rows,), bool, False),
            ("error", (n,), (rows,), str, ""),
        ]
        if g.attrs.get("seq_dim"):
            specs.append(("seq_lengths", (n,), (rows,), "int64", 0))
            if "seq" not in have:
                with contextlib.suppress(zarr.errors.ContainsGroupError):  # another writer made it just now
                    g.require_group("seq")
        specs.append(("done", (n,), (rows,), bool, False))  # last: its presence means all are there
        for key, shape, chunks, dtype, fill in specs:
            if key not in have:
                with contextlib.suppress(zarr.errors.ContainsArrayError):  # another writer made it: same metadata
                    arrays.create(g, key, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill)
        return FeatureSet(self.root["features"][name], name, lambda: self.ids, self.url, self.location,
                          self.ids_of)

    def remove_feature_set(self, name: str) -> None:
        """Delete feature set ``name`` (all its arrays)."""
        self.location.fs.rm(self.location.key(f"features/{name}"), recursive=True)

    def reopen_feature_set(self, name: str) -> FeatureSet:
        """Open ``name``, re-creating any of its arrays that is missing (all rows of a re-created
        ``done`` are pending)."""
        return self._complete(name)

    def index_names(self) -> list[str]:
        """Every search index group, from the store's listing."""
        base = self.location.key(INDEXES)
        return sorted(str(p)[len(base) + 1:].split("/")[0] for p in self.location.fs.glob(f"{base}/*/zarr.json"))

    def touch_feature_set(self, name: str) -> None:
        """Record when a feature set was last written. Writers may race here; each writes the
        same keys, so the last one wins with an equally valid time."""
        g = zarr.open_group(self.location.zarr_store(), path=f"features/{name}", mode="r+")
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
        """What the store holds. The table's counts come from its summary, written with it (stores
        made before it had one are counted here, reading the whole table)."""
        ta = self.table_attrs
        summary = ta.get("summary") or table_summary(self.table)
        features = {}
        for name in self.feature_sets():
            fs = self.feature_set(name)
            features[name] = fs.summary()
            failed = fs.errors(limit=20) if features[name]["rows_failed"] else []
            features[name]["errors"] = [{"row": r, "id": i, "reason": why} for r, i, why in failed]
        return {
            "path": self.url,
            "dataset": self.dataset,
            **summary,
            "problems": len(ta.get("problems", [])),
            "repairs": len(ta.get("repairs", [])),
            "features": features,
            "created": self.root.attrs.get("created"),
            "emostore_version": self.root.attrs.get("emostore_version"),
        }


def _open_error(loc: Location, exc: BaseException) -> UserError:
    """One line for a store that cannot be opened: damaged metadata, or storage out of reach."""
    if isinstance(exc, (ValueError, KeyError, TypeError)) or "JSON" in type(exc).__name__:
        return StoreDamaged(f"{loc}: the store's metadata cannot be read ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:80] if str(exc) else ''}); run `emostore verify {loc}`")
    return UserError(f"{loc}: cannot read the store ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")


def _group_document(attrs: dict[str, Any]) -> bytes:
    """The ``zarr.json`` of a group with these attributes, exactly as Zarr writes it."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.group import GroupMetadata

    return GroupMetadata(attributes=attrs).to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()
