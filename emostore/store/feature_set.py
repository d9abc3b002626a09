"""One feature set: per-utterance vectors plus done/mask/error arrays, written chunk by chunk.

The row chunk is the unit of work. A writer fills one chunk of ``values``, then the same chunk
of ``mask`` and ``error``, and last of ``done``. Each chunk file is replaced atomically (a
rename in Zarr's local store, one PUT on an object store), so a process killed at any moment
leaves every chunk either done (with all its data) or pending; a rerun recomputes only pending
chunks. Shards own disjoint chunks (``chunk % n == i``) and cluster tasks one chunk each, so
concurrent writers never touch the same file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import zarr

from emostore.errors import UserError

#: Target size of one chunk of ``values`` (float32): big enough to batch well, small enough to
#: lose little work when killed.
CHUNK_BYTES = 8 * 1024 * 1024
MIN_CHUNK_ROWS, MAX_CHUNK_ROWS = 64, 4096


def config_hash(config: dict[str, Any]) -> str:
    """A stable short hash of a JSON-serialisable configuration (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def default_chunk_rows(dim: int) -> int:
    rows = CHUNK_BYTES // (4 * max(dim, 1))
    rows = 1 << max(rows.bit_length() - 1, 0)
    return int(min(MAX_CHUNK_ROWS, max(MIN_CHUNK_ROWS, rows)))


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: owns the chunks whose number is ``index`` modulo ``count``."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> Shard:
        if not text:
            return cls()
        try:
            i, n = (int(p) for p in text.split("/"))
        except ValueError:
            raise UserError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
        if n < 1 or not 0 <= i < n:
            raise UserError(f"--shard {text}: need 0 <= I < N")
        return cls(i, n)

    def owns(self, chunk: int) -> bool:
        return chunk % self.count == self.index


class FeatureSet:
    """Reader/writer of one feature set group ``features/<modality>/<name>``."""

    def __init__(self, group: zarr.Group, name: str, ids: np.ndarray | Callable[[], np.ndarray],
                 ids_of: Callable[[np.ndarray], np.ndarray] | None = None):
        self.group = group
        self.name = name
        self._ids_or_loader = ids
        #: Reads the ids of some rows only (so that a few errors do not load every id).
        self._ids_of = ids_of

    @property
    def _ids(self) -> np.ndarray:
        """The utterance ids, read from the table only when needed (index builds stream without them)."""
        if callable(self._ids_or_loader):
            self._ids_or_loader = self._ids_or_loader()
        return self._ids_or_loader

    # ----- description -------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def modality(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def dim(self) -> int:
        return int(self.group.attrs["dim"])

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.group.attrs["config"])

    @property
    def config_hash(self) -> str:
        return str(self.group.attrs["config_hash"])

    @property
    def seq_dim(self) -> int | None:
        """Width of the per-utterance frame sequences, when this feature set keeps them."""
        v = self.group.attrs.get("seq_dim")
        return int(v) if v else None

    @property
    def layers(self) -> int:
        """How many layers each vector stacks (``L x D``, speech encoders), else 1."""
        return int(self.group.attrs.get("layers") or 1)

    @property
    def n_rows(self) -> int:
        return int(self.group["done"].shape[0])

    @property
    def chunk_rows(self) -> int:
        return int(self.group["done"].chunks[0])

    @property
    def n_chunks(self) -> int:
        return -(-self.n_rows // self.chunk_rows)

    def chunk_slice(self, chunk: int) -> slice:
        start = chunk * self.chunk_rows
        return slice(start, min(start + self.chunk_rows, self.n_rows))

    # ----- state -------------------------------------------------------------------------
    def done(self) -> np.ndarray:
        return np.asarray(self.group["done"][:], dtype=bool)

    def mask(self) -> np.ndarray:
        """True where the row holds valid data (done and no error)."""
        return np.asarray(self.group["mask"][:], dtype=bool)

    def errors(self, limit: int | None = None) -> list[tuple[int, str, str]]:
        """``(row, utterance id, reason)`` for every row that was processed and failed (the first
        ``limit`` of them); only those rows' reasons and ids are read."""
        rows = np.flatnonzero(self.done() & ~self.mask())[:limit]
        if not len(rows):
            return []
        reasons = np.asarray(self.group["error"].oindex[rows]).tolist()
        ids = self._ids_of(rows) if callable(self._ids_or_loader) and self._ids_of else self._ids[rows]
        return [(int(r), str(i), str(why)) for r, i, why in zip(rows, ids, reasons) if why != ""]

    def pending_chunks(self, shard: Shard = Shard()) -> list[int]:
        done = self.done()
        out = []
        for c in range(self.n_chunks):
            if shard.owns(c) and not done[self.chunk_slice(c)].all():
                out.append(c)
        return out

    def is_complete(self) -> bool:
        return bool(self.done().all())

    def counts(self) -> tuple[int, int, int]:
        """``(rows done, rows valid, rows failed)``. A complete feature set without a failed row is
        known from the listing of its chunks alone: every ``done`` chunk stored, no ``error`` chunk
        (a chunk equal to the fill value everywhere, all ``""``, is not stored); else both arrays
        are read."""
        g = self.group
        if g["done"].nchunks_initialized == self.n_chunks and g["error"].nchunks_initialized == 0:
            return self.n_rows, self.n_rows, 0
        done, mask = self.done(), self.mask()
        return int(done.sum()), int(mask.sum()), int((done & ~mask).sum())

    def summary(self) -> dict[str, Any]:
        rows_done, rows_valid, rows_failed = self.counts()
        a = self.attrs
        return {
            "dim": self.dim,
            "dtype": a.get("dtype", "float32"),
            "rows": self.n_rows,
            "rows_done": rows_done,
            "rows_valid": rows_valid,
            "rows_failed": rows_failed,
            "complete": rows_done == self.n_rows,
            "config_hash": self.config_hash,
            "config": self.config,
            "encoder": a.get("encoder"),
            "version": a.get("version"),
            "created": a.get("created"),
            "updated": a.get("updated"),
        }

    # ----- writing -----------------------------------------------------------------------
    def write_chunk(self, chunk: int, values: np.ndarray, ok: np.ndarray, reasons: Sequence[str],
                    sequences: Sequence[np.ndarray | None] | None = None) -> None:
        """Write one whole chunk. Rows with ``ok`` False get NaN values and their reason.

        ``sequences`` (feature sets with ``seq_dim``): one [T, seq_dim] array per row (or None).
        They go to a Zarr array of their own per chunk, ``seq/<chunk>``, with the lengths in
        ``seq_lengths``; like the rest, they count only once ``done`` is written.
        """
        sl = self.chunk_slice(chunk)
        n = sl.stop - sl.start
        values = np.asarray(values, dtype=np.float32).reshape(n, self.dim)
        ok = np.asarray(ok, dtype=bool).reshape(n)
        if len(reasons) != n:
            raise ValueError(f"chunk {chunk}: {len(reasons)} reasons for {n} rows")
        values = np.where(ok[:, None], values, np.float32(np.nan))
        errors = np.array(["" if good else (r or "failed") for good, r in zip(ok, reasons)], dtype=object)
        if self.seq_dim:
            self._write_sequences(chunk, sl, ok, sequences)
        self.group["values"][sl] = values
        self.group["mask"][sl] = ok
        self.group["error"][sl] = errors
        self.group["done"][sl] = np.ones(n, dtype=bool)  # last: the chunk counts only once complete

    def _write_sequences(self, chunk: int, sl: slice, ok: np.ndarray,
                         sequences: Sequence[np.ndarray | None] | None) -> None:
        d = int(self.seq_dim or 0)
        seqs = [np.asarray(s, dtype=np.float32).reshape(-1, d) if (s is not None and good) else
                np.zeros((0, d), np.float32) for s, good in zip(sequences or [None] * len(ok), ok)]
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        frames = np.concatenate(seqs) if seqs else np.zeros((0, d), np.float32)
        arr = self.group.require_group("seq").create_array(
            str(chunk), shape=frames.shape, chunks=(max(1, min(len(frames), 8192)), d), dtype="float32",
            fill_value=np.nan, overwrite=True)
        if len(frames):
            arr[:] = frames
        self.group["seq_lengths"][sl] = lengths

    # ----- reading -----------------------------------------------------------------------
    def read_sequence(self, row: int) -> np.ndarray:
        """The [T, seq_dim] frame sequence of one row, reading only that row's frames."""
        if not self.seq_dim:
            raise UserError(f"feature set {self.name!r} keeps no frame sequences")
        chunk = row // self.chunk_rows
        sl = self.chunk_slice(chunk)
        if not bool(self.group["done"][row]):
            return np.zeros((0, self.seq_dim), np.float32)
        lengths = np.asarray(self.group["seq_lengths"][sl], dtype=np.int64)
        start = int(lengths[: row - sl.start].sum())
        return np.asarray(self.group["seq"][str(chunk)][start:start + int(lengths[row - sl.start])])

    def read_sequences(self, rows: Sequence[int] | np.ndarray | None = None) -> list[np.ndarray]:
        """Frame sequences of ``rows`` (all by default), one chunk read at a time."""
        rows = np.arange(self.n_rows) if rows is None else np.asarray(rows)
        out: list[np.ndarray] = [np.zeros((0, int(self.seq_dim or 0)), np.float32)] * len(rows)
        done = self.done()
        by_chunk: dict[int, list[int]] = {}
        for k, r in enumerate(rows):
            if done[r]:
                by_chunk.setdefault(int(r) // self.chunk_rows, []).append(k)
        for chunk, ks in by_chunk.items():
            sl = self.chunk_slice(chunk)
            lengths = np.asarray(self.group["seq_lengths"][sl], dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            frames = np.asarray(self.group["seq"][str(chunk)][:])
            for k in ks:
                i = int(rows[k]) - sl.start
                out[k] = frames[offsets[i]:offsets[i + 1]]
        return out

    def read_values(self, rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """``(X, mask)`` of a range of rows (all by default), without reading the ids."""
        X = np.asarray(self.group["values"][rows], dtype=np.float32)
        return X, np.asarray(self.group["mask"][rows], dtype=bool)

    def read(self, rows: np.ndarray | slice | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids, X, mask)`` for ``rows`` (all rows by default); invalid rows are NaN in X."""
        if rows is None:
            rows = slice(None)
        if isinstance(rows, slice):
            return (self._ids[rows], *self.read_values(rows))
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        X_all = self.group["values"]
        X = np.asarray(X_all.oindex[rows, :], dtype=np.float32) if len(rows) else np.zeros((0, self.dim), np.float32)
        mask = np.asarray(self.group["mask"][:], dtype=bool)[rows]
        return self._ids[rows], X, mask
