"""The utterance table as one Zarr array per column, so plain ``zarr`` can read it."""

from __future__ import annotations

import json
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
            arr = arrays.create(group, col, shape=(n,), chunks=(chunk,), dtype=str, fill_value="")
        else:
            values = table[col].to_numpy(dtype=kind)
            fill = np.nan if kind == "float64" else (False if kind == "bool" else 0)
            arr = arrays.create(group, col, shape=(n,), chunks=(chunk,), dtype=kind, fill_value=fill)
        arr[:] = values
    # attrs must be JSON: round-trip to turn numpy scalars and the like into plain values
    group.attrs.update(json.loads(json.dumps({"columns": list(table.columns), "kinds": kinds, "n_rows": n,
                                              arrays.INTEGRITY: arrays.INTEGRITY_VERSION, **attrs}, default=str)))


def read_table(group: zarr.Group) -> pd.DataFrame:
    """Read the table back; empty strings of text columns come back as ``None``."""
    columns: list[str] = group.attrs["columns"]
    kinds: dict[str, str] = group.attrs["kinds"]
    data: dict[str, Any] = {}
    for col in columns:
        values = group[col][:]
        if kinds[col] == "str":
            data[col] = pd.Series([v if v != "" else None for v in values.tolist()], dtype=object)
        else:
            data[col] = pd.Series(values)
    return pd.DataFrame(data, columns=columns)


def columns_hash(table: pd.DataFrame, columns: list[str]) -> str:
    """A short content hash of some columns of the table (a missing column hashes as empty), to
    tell whether something derived from them (a fine-tuned model, say) was made from this table."""
    import hashlib

    h = hashlib.sha256()
    for col in columns:
        values = table[col].tolist() if col in table else []
        h.update(json.dumps([col, values], default=str, ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()[:16]
