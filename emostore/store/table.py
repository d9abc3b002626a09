"""The utterance table as one Zarr array per column, so plain ``zarr`` can read it.

The table is written once, when the store is created; its summary (counts per split and label,
dialogues, speakers) is computed then and kept in its attributes, so ``emostore info`` does not
read millions of strings. Commands read only the columns they need (:func:`read_columns`), and
label-like columns as integer codes (:func:`read_codes`), a block at a time.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import zarr

TABLE_CHUNK = 16384


def _column_kind(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int64"
    if pd.api.types.is_float_dtype(series):
        return "float64"
    return "str"


def write_table(group: zarr.Group, table: pd.DataFrame, attrs: dict[str, Any]) -> None:
    """Write ``table`` under ``group`` (one array per column) with its attributes."""
    n = len(table)
    chunk = max(1, min(TABLE_CHUNK, n))
    kinds: dict[str, str] = {}
    for col in table.columns:
        kind = _column_kind(table[col])
        kinds[col] = kind
        if kind == "str":
            values = np.array(["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                               for v in table[col]], dtype=object)
            arr = group.create_array(col, shape=(n,), chunks=(chunk,), dtype=str, fill_value="")
        else:
            values = table[col].to_numpy(dtype=kind)
            fill = np.nan if kind == "float64" else (False if kind == "bool" else 0)
            arr = group.create_array(col, shape=(n,), chunks=(chunk,), dtype=kind, fill_value=fill)
        arr[:] = values
    # attrs must be JSON: round-trip to turn numpy scalars and the like into plain values
    group.attrs.update(json.loads(json.dumps({"columns": list(table.columns), "kinds": kinds,
                                              "n_rows": n, "summary": table_summary(table), **attrs}, default=str)))


def table_summary(table: pd.DataFrame) -> dict[str, Any]:
    """Counts of the table that ``emostore info`` shows (most common first)."""

    def counts(values: Any) -> dict[str, int]:
        return {str(k): int(v) for k, v in Counter(x for x in values if x is not None).most_common()}

    def column(col: str) -> pd.Series:
        return table[col] if col in table else pd.Series([None] * len(table), dtype=object)

    split = column("split")
    return {
        "utterances": len(table),
        "dialogues": int(column("dialogue").nunique()),
        "speakers": int(column("speaker").nunique()),
        "splits": counts(split),
        "labels": counts(column("emotion")),
        "labels_by_split": {s: counts(column("emotion")[split == s]) for s in counts(split)},
        "sentiments": counts(column("sentiment")),
        "with_text": int(column("text").notna().sum()),
        "with_media": int(column("media").notna().sum()),
    }


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
