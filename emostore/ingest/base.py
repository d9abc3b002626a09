"""The utterance table every adapter produces, and the adapter registry."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from emostore.core.splits import split_name
from emostore.errors import UserError

#: Fixed columns of the utterance table, in order. Adapters may add extra columns after these.
STR_COLUMNS = ["id", "dataset", "dialogue", "speaker", "text", "media", "emotion", "sentiment", "split"]
INT_COLUMNS = ["turn"]
FLOAT_COLUMNS = ["start", "end", "sentiment_score"]
COLUMNS = [
    "id", "dataset", "dialogue", "turn", "speaker", "text", "media",
    "start", "end", "emotion", "sentiment", "sentiment_score", "split",
]


class IngestError(UserError):
    """A problem that stops the whole ingest (no usable rows, unreadable root, missing column)."""


@dataclass
class Problem:
    """One recorded row- or file-level problem. ``level`` is error, warning or repair."""

    source: str
    reason: str
    row: int | None = None
    id: str | None = None
    level: str = "error"

    def __str__(self) -> str:
        where = self.source
        if self.row is not None:
            where += f" row {self.row}"
        if self.id:
            where += f" ({self.id})"
        return f"{where}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class IngestResult:
    table: pd.DataFrame
    dataset: str
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


class Adapter(ABC):
    """A corpus reader: ``load`` returns the utterance table plus recorded problems."""

    name: ClassVar[str]

    @abstractmethod
    def load(self, root: Path, **options: Any) -> IngestResult: ...


ADAPTERS: dict[str, type[Adapter]] = {}


def register(cls: type[Adapter]) -> type[Adapter]:
    ADAPTERS[cls.name] = cls
    return cls


def get_adapter(name: str) -> Adapter:
    """The adapter registered as ``name`` (the package's ``__init__`` imports, and so registers,
    every adapter module before this module is used)."""
    if name not in ADAPTERS:
        raise IngestError(f"unknown dataset adapter {name!r}; known: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[name]()


def hashed_split(key: str, dev: float = 0.1, test: float = 0.1) -> str:
    """Deterministic split from a key (a dialogue id, so that dialogues never straddle splits)."""
    h = int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    if h < test:
        return "test"
    if h < test + dev:
        return "dev"
    return "train"


def normalize_split(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return split_name(value) or None


def _clean_str(value: Any) -> str | None:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    s = str(value)
    return s if s.strip() else None


def finalize(df: pd.DataFrame, dataset: str, problems: list[Problem], source: str) -> pd.DataFrame:
    """Give a raw adapter table the fixed columns and dtypes; drop and record duplicate ids.

    Missing optional columns are added empty. Strings are Python ``str`` or ``None``;
    ``turn`` is int64; ``start``/``end``/``sentiment_score`` float64 (NaN when absent).
    """
    df = df.copy()
    if "dataset" not in df.columns:
        df["dataset"] = dataset
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = None
    if df["id"].isna().any():
        raise IngestError(f"{source}: some rows have no utterance id")
    for col in STR_COLUMNS:
        df[col] = pd.Series([_clean_str(v) for v in df[col]], index=df.index, dtype=object)
    df["split"] = pd.Series([normalize_split(v) for v in df["split"]], index=df.index, dtype=object)
    for col in FLOAT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    df["turn"] = pd.to_numeric(df["turn"], errors="coerce").fillna(-1).astype("int64")

    dup = df["id"].duplicated(keep="first")
    for idx in np.flatnonzero(dup.to_numpy()):
        uid = df["id"].iloc[idx]
        problems.append(Problem(source, f"duplicate utterance id {uid!r}; kept the first, dropped this row",
                                row=int(idx), id=uid))
    df = df.loc[~dup.to_numpy()]
    if df.empty:
        raise IngestError(f"{source}: no usable utterances")
    extra = [c for c in df.columns if c not in COLUMNS]
    for col in extra:  # numbers read as text become numbers again
        if df[col].dtype == object:
            num = pd.to_numeric(df[col], errors="coerce")
            if num.notna().sum() == df[col].notna().sum() and df[col].notna().any():
                df[col] = num.astype("float64")
    return df[COLUMNS + extra].reset_index(drop=True)


def sniff_encoding(path: Path) -> str | None:
    """The text encoding a file's first bytes show (a byte-order mark, or UTF-16's zero bytes);
    ``"binary"`` for a file that is not text; None to try UTF-8 (then Windows-1252)."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    if len(head) >= 4 and b"\x00" in head:
        even, odd = head[0::2].count(0), head[1::2].count(0)
        if odd > 0.4 * len(head) / 2 and even == 0:
            return "utf-16-le"
        if even > 0.4 * len(head) / 2 and odd == 0:
            return "utf-16-be"
        return "binary"
    return None


def read_csv(path: Path, problems: list[Problem]) -> pd.DataFrame | None:
    """Read a CSV as strings (UTF-8, UTF-16 with or without a byte-order mark, else Windows-1252,
    saying so); on failure record a problem naming the file and return None."""
    try:
        encoding = sniff_encoding(path)
        if encoding == "binary":
            problems.append(Problem(str(path), "not a text file (binary bytes, such as a spreadsheet or an archive); "
                                               "save it as CSV text (UTF-8)"))
            return None
        if encoding is not None:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding=encoding)
            if encoding != "utf-8-sig":
                problems.append(Problem(str(path), f"read as {encoding.upper()} (its byte-order mark or zero "
                                                   "bytes say so)", level="warning"))
            return df
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
    except UnicodeDecodeError:
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="cp1252")
        except Exception as exc:  # noqa: BLE001
            problems.append(Problem(str(path), f"unreadable CSV: {exc}"))
            return None
        problems.append(Problem(str(path), "not UTF-8; read as Windows-1252", level="warning"))
        return df
    except FileNotFoundError:
        problems.append(Problem(str(path), "file not found"))
    except Exception as exc:  # noqa: BLE001  (parser errors, permissions, binary files)
        problems.append(Problem(str(path), f"unreadable CSV: {exc}"))
    return None


def repair_mojibake(df: pd.DataFrame, columns: list[str], source: str, problems: list[Problem]) -> int:
    """Repair UTF-8 text that was decoded as Windows-1252 (``â€™`` for ``’``), in place.

    Every repaired cell is recorded as a ``repair`` problem with the text before and after.
    """
    import ftfy

    repaired = 0
    for col in columns:
        if col not in df.columns:
            continue
        values = df[col].tolist()
        for i, v in enumerate(values):
            if not isinstance(v, str) or v.isascii():
                continue
            fixed = ftfy.fix_encoding(v)
            if fixed != v:
                values[i] = fixed
                repaired += 1
                uid = df["id"].iat[i] if "id" in df.columns else None
                problems.append(Problem(source, f"repaired mojibake in {col}: {v!r} -> {fixed!r}",
                                        row=i, id=uid, level="repair"))
        df[col] = pd.Series(values, index=df.index, dtype=object)
    return repaired
