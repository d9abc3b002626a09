"""The utterance table as one Zarr array per column, so plain ``zarr`` can read it.

The table is written once, when the store is created; its summary (counts per split and label,
dialogues, speakers) is computed then and kept in its attributes, so ``emostore info`` does not
read millions of strings. Commands read only the columns they need (:func:`read_columns`), and
label-like columns as integer codes (:func:`read_codes`), a block at a time.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import zarr

import emostore.store.arrays as arrays

TABLE_CHUNK = 16384


def _column_kind(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int64"
    if pd.api.types.is_float_dtype(series):
        return "float64"
    return "str"


def write_table(group: zarr.Group, table: pd.DataFrame | Iterable[pd.DataFrame], attrs: dict[str, Any],
                n_rows: int | None = None) -> None:
    """Write ``table`` under ``group`` (one array per column) with its attributes. ``table`` may be
    blocks of rows with the same columns (``n_rows`` in all), so that no more than one block is
    ever held: the column kinds are the first block's."""
    blocks: Iterable[pd.DataFrame] = [table] if isinstance(table, pd.DataFrame) else table
    n = len(table) if isinstance(table, pd.DataFrame) else int(n_rows or 0)
    chunk = max(1, min(TABLE_CHUNK, n))
    kinds: dict[str, str] = {}
    columns: list[str] = []
    made: dict[str, zarr.Array] = {}
    summary, start = TableSummary(), 0
    for block in blocks:
        if not columns:
            columns = list(block.columns)
            kinds = {col: _column_kind(block[col]) for col in columns}
            for col, kind in kinds.items():
                fill = "" if kind == "str" else (np.nan if kind == "float64" else (False if kind == "bool" else 0))
                made[col] = arrays.create(group, col, shape=(n,), chunks=(chunk,),
                                          dtype=str if kind == "str" else kind, fill_value=fill)
        if list(block.columns) != columns or start + len(block) > n:
            raise ValueError(f"table block at row {start}: other columns, or more than {n} rows in all")
        for col, kind in kinds.items():
            if kind == "str":
                values = np.array(["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                                   for v in block[col]], dtype=object)
            else:
                values = block[col].to_numpy(dtype=kind)
            made[col][start:start + len(block)] = values
        summary.add(block)
        start += len(block)
    if start != n:
        raise ValueError(f"the table blocks hold {start} rows, not {n}")
    # attrs must be JSON: round-trip to turn numpy scalars and the like into plain values
    meta = {"columns": columns, "kinds": kinds, "n_rows": n, "summary": summary.result(),
            arrays.INTEGRITY: arrays.INTEGRITY_VERSION, **attrs}
    group.attrs.update(json.loads(json.dumps(meta, default=str)))


class TableSummary:
    """Counts of the table that ``emostore info`` shows (most common first), added up block by block."""

    def __init__(self) -> None:
        self.rows = 0
        self.counts: dict[str, Counter[str]] = {c: Counter() for c in ("split", "emotion", "sentiment")}
        self.by_split: dict[str, Counter[str]] = {}
        self.distinct: dict[str, set[str]] = {"dialogue": set(), "speaker": set()}
        self.present = {"text": 0, "media": 0}
        self.spaced_ids = False

    def add(self, table: pd.DataFrame) -> TableSummary:
        def column(col: str) -> list[Any]:
            return table[col].tolist() if col in table else [None] * len(table)

        self.rows += len(table)
        for col, counter in self.counts.items():
            counter.update(x for x in column(col) if x is not None)
        for split, emotion in zip(column("split"), column("emotion")):
            if split is not None and emotion is not None:
                self.by_split.setdefault(split, Counter())[emotion] += 1
        for col, seen in self.distinct.items():
            seen.update(x for x in column(col) if isinstance(x, str))
        for col in self.present:
            self.present[col] += int(table[col].notna().sum()) if col in table else 0
        self.spaced_ids = self.spaced_ids or any(any(c.isspace() for c in str(i)) for i in column("id"))
        return self

    def result(self) -> dict[str, Any]:
        def ordered(counter: Counter[str]) -> dict[str, int]:
            return {str(k): int(v) for k, v in counter.most_common()}

        splits = ordered(self.counts["split"])
        return {"utterances": self.rows, "dialogues": len(self.distinct["dialogue"]),
                "speakers": len(self.distinct["speaker"]), "splits": splits,
                "labels": ordered(self.counts["emotion"]),
                "labels_by_split": {s: ordered(self.by_split.get(s, Counter())) for s in splits},
                "sentiments": ordered(self.counts["sentiment"]),
                "with_text": self.present["text"], "with_media": self.present["media"],
                "ids_with_spaces": self.spaced_ids}


def table_summary(table: pd.DataFrame) -> dict[str, Any]:
    """Counts of the table that ``emostore info`` shows (most common first)."""
    return TableSummary().add(table).result()


def read_table(group: zarr.Group, columns: list[str] | None = None) -> pd.DataFrame:
    """Read the table back (only ``columns`` when given); empty strings of text columns come back
    as ``None``."""
    kinds: dict[str, str] = group.attrs["kinds"]
    columns = list(group.attrs["columns"]) if columns is None else columns
    data: dict[str, Any] = {}
    for col in columns:
        values = group[col][:]
        if kinds[col] == "str":
            data[col] = pd.Series([v if v != "" else None for v in values.tolist()], dtype=object)
        else:
            data[col] = pd.Series(values)
    return pd.DataFrame(data, columns=columns)


def read_rows(group: zarr.Group, rows: np.ndarray, columns: list[str]) -> pd.DataFrame:
    """Some rows of some columns (a search's neighbours), reading only the chunks that hold them."""
    kinds: dict[str, str] = group.attrs["kinds"]
    rows = np.asarray(rows, dtype=np.int64)
    data: dict[str, Any] = {}
    for col in columns:
        values = group[col].oindex[rows] if len(rows) else np.zeros(0)
        if kinds[col] == "str":
            data[col] = pd.Series([v if v != "" else None for v in np.asarray(values).tolist()], dtype=object)
        else:
            data[col] = pd.Series(np.asarray(values))
    return pd.DataFrame(data, columns=columns)


def read_codes(group: zarr.Group, col: str, block: int = 4 * TABLE_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """``(codes [N] int32, categories)`` of a string column, read a block at a time: the categories
    sorted, ``-1`` for an empty value. Millions of rows cost 4 bytes each, not a Python string."""
    arr = group[col]
    n = int(arr.shape[0])
    codes = np.empty(n, dtype=np.int32)
    seen: dict[str, int] = {}
    for lo in range(0, n, block):
        local, uniques = pd.factorize(np.asarray(arr[lo:lo + block], dtype=object))
        ids = np.array([seen.setdefault(str(u), len(seen)) for u in uniques], dtype=np.int32)
        codes[lo:lo + len(local)] = ids[local] if len(ids) else local
    names = np.array(list(seen), dtype=object)
    order = np.argsort(names, kind="stable") if len(names) else np.zeros(0, dtype=np.int64)
    empty = [i for i, v in enumerate(names) if v == ""]
    rank = np.empty(len(names), dtype=np.int32)
    rank[order] = np.arange(len(names), dtype=np.int32)
    if empty:  # "" sorts first: drop it and shift the others down
        rank = np.where(np.arange(len(names)) == empty[0], -1, rank - 1).astype(np.int32)
        order = order[1:]
    return (rank[codes] if len(names) else codes), names[order]


def columns_hash(table: pd.DataFrame, columns: list[str]) -> str:
    """A short content hash of some columns of the table (a missing column hashes as empty), to
    tell whether something derived from them (a fine-tuned model, say) was made from this table."""
    import hashlib

    h = hashlib.sha256()
    for col in columns:
        values = table[col].tolist() if col in table else []
        h.update(json.dumps([col, values], default=str, ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()[:16]
