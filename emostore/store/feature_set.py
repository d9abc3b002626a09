"""One feature set: per-utterance vectors plus done/mask/error arrays, written chunk by chunk.

The row chunk is the unit of work. A writer fills one chunk of ``values``, then the same chunk
of ``mask`` and ``error``, and last of ``done``. Each chunk file is replaced atomically (a
rename in Zarr's local store, one PUT on an object store), so a process killed at any moment
leaves every chunk either done (with all its data) or pending; a rerun recomputes only pending
chunks. Shards own disjoint chunks (``chunk % n == i``) and cluster tasks one chunk each, so
concurrent writers never touch the same file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import zarr

import emostore.store.arrays as arrays
from emostore.errors import UserError

#: Target size of one chunk of ``values`` (float32): big enough to batch well, small enough to
#: lose little work when killed.
CHUNK_BYTES = 8 * 1024 * 1024
MIN_CHUNK_ROWS, MAX_CHUNK_ROWS = 64, 4096


def default_chunk_rows(dim: int) -> int:
    rows = CHUNK_BYTES // (4 * max(dim, 1))
    rows = 1 << max(rows.bit_length() - 1, 0)
    return int(min(MAX_CHUNK_ROWS, max(MIN_CHUNK_ROWS, rows)))


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


class StoreDamaged(UserError):
    """A store's file is missing or its bytes changed; the message says where and what to run."""


class FeatureSet:
    """Reader/writer of one feature set group ``features/<modality>/<name>``.

    Reads never return what the store does not hold: a row counts only once its chunk is done;
    a chunk that fails its checksum, or whose files contradict ``done`` (a done, valid row
    without values; a done, failed row without a reason), stops the read with a
    :class:`StoreDamaged` line naming the chunk and ``emostore verify --repair``."""

    def __init__(self, group: zarr.Group, name: str, ids: np.ndarray | Callable[[], np.ndarray],
                 store_url: str = "", location: Any = None,
                 ids_of: Callable[[np.ndarray], np.ndarray] | None = None):
        self.group = group
        self.name = name
        self._ids_or_loader = ids
        self.store_url = store_url
        #: The store's :class:`~emostore.store.location.Location` (for checks of the stored bytes).
        self.location = location
        self.path = f"features/{name}"
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

    @cached_property
    def n_rows(self) -> int:
        """Rows (read once: opening an array reads its metadata, which a loop over chunks must not)."""
        return int(self.array("done").shape[0])

    @cached_property
    def chunk_rows(self) -> int:
        return int(self.array("done").chunks[0])

    @property
    def checked(self) -> bool:
        """Written with checksums and every chunk stored (see :mod:`emostore.store.arrays`)."""
        return bool(self.group.attrs.get(arrays.INTEGRITY))

    # ----- damage ------------------------------------------------------------------------
    def damaged(self, what: str, chunk: int | None = None) -> StoreDamaged:
        """The one-line error for damage to this feature set (``chunk``: which chunk)."""
        where = f"{self.store_url}: " if self.store_url else ""
        if chunk is not None:
            sl = self.chunk_slice(chunk)
            what = f"chunk {chunk} (rows {sl.start}-{sl.stop - 1}): {what}"
        return StoreDamaged(f"{where}feature set {self.name} is damaged, {what}; run `emostore verify "
                            f"{self.store_url or 'STORE'} --repair`, then extract again")

    def array(self, key: str) -> zarr.Array:
        """One of the feature set's arrays (``values``, ``mask``...), or a one-line StoreDamaged."""
        try:
            return self.group[key]
        except KeyError:
            raise self.damaged(f"its {key!r} array is missing") from None
        except Exception as exc:  # noqa: BLE001  (bad JSON or bytes in the array's metadata)
            raise self.damaged(f"the metadata of its {key!r} array cannot be read ({type(exc).__name__})") from None

    def _read(self, key: str, selection: Any = slice(None)) -> np.ndarray:
        """``array(key)[selection]``; a chunk that cannot be decoded becomes a StoreDamaged naming it."""
        arr = self.array(key)
        try:
            return np.asarray(arr[selection])
        except Exception as exc:  # noqa: BLE001  (checksum, decompression: find the chunk, else re-raise)
            for c in range(arrays.n_chunks(arr)):
                try:
                    arr[self.chunk_slice(c)]
                except Exception as inner:  # noqa: BLE001
                    raise self.damaged(f"its {key!r} chunk cannot be read ({_short(inner)})", c) from None
            raise exc

    @property
    def n_chunks(self) -> int:
        return -(-self.n_rows // self.chunk_rows)

    def chunk_slice(self, chunk: int) -> slice:
        start = chunk * self.chunk_rows
        return slice(start, min(start + self.chunk_rows, self.n_rows))

    # ----- state -------------------------------------------------------------------------
    def done(self, *, tolerant: bool = False) -> np.ndarray:
        """True for the rows of finished chunks. ``tolerant`` (extraction): a ``done`` chunk that
        cannot be read counts as not done, so that it is computed again."""
        if not tolerant:
            return self._flags("done")
        arr = self.array("done")
        out = np.zeros(self.n_rows, dtype=bool)
        for c in range(self.n_chunks):
            sl = self.chunk_slice(c)
            with contextlib.suppress(Exception):  # damaged: pending
                out[sl] = np.asarray(arr[sl], dtype=bool)
        return out

    def mask(self) -> np.ndarray:
        """True where the row holds valid data (its chunk done, and no error)."""
        return self._flags("mask") & self.done()

    def _flags(self, key: str) -> np.ndarray:
        """The whole ``done`` or ``mask`` array as bools. Each holds one small file per chunk (2,442
        in a 10M-row store): read by zarrs where it can (:func:`arrays.read_whole`), else by zarr
        with more reads in flight than its default 10 and chunks decoded in batches."""
        fast = arrays.read_whole(self.group, key)
        if fast is not None:
            return fast.astype(bool)
        with zarr.config.set({"async.concurrency": 64, "codec_pipeline.batch_size": 64}):
            return self._read(key).astype(bool)

    def errors(self, limit: int | None = None) -> list[tuple[int, str, str]]:
        """``(row, utterance id, reason)`` for every row that was processed and failed (the first
        ``limit`` of them); only those rows' reasons and ids are read."""
        rows = np.flatnonzero(self.done() & ~self.mask())[:limit]
        if not len(rows):
            return []
        reasons = np.asarray(self.array("error").oindex[rows]).tolist()
        ids = self._ids_of(rows) if callable(self._ids_or_loader) and self._ids_of else self._ids[rows]
        return [(int(r), str(i), str(why)) for r, i, why in zip(rows, ids, reasons) if why != ""]

    def pending_chunks(self, shard: Shard = Shard(), *, check: bool = False) -> list[int]:
        """Chunks this shard owns that are not done. ``check``: also those whose stored files are
        damaged (missing, or failing their checksum), so that extraction computes them again."""
        done = self.done(tolerant=check)
        owned = [c for c in range(self.n_chunks) if shard.owns(c)]
        out = {c for c in owned if not done[self.chunk_slice(c)].all()}
        if check:
            out |= set(self.damaged_chunks([c for c in owned if c not in out]))
        return sorted(out)

    def damaged_chunks(self, chunks: list[int] | None = None, *, checksums: bool = True,
                       done: np.ndarray | None = None) -> dict[int, str]:
        """Of ``chunks`` (all by default), those whose stored files are missing or fail their
        checksum (``checksums`` False: presence only), without decoding them: chunk -> what is wrong.
        ``done``: the ``done`` array when already read."""
        from emostore.store.integrity import feature_set_chunk_damage

        return feature_set_chunk_damage(self, chunks, checksums=checksums, done=done)

    def is_complete(self) -> bool:
        return bool(self.done().all())

    def counts(self) -> tuple[int, int, int, list[int]]:
        """``(rows done, rows valid, rows failed, chunks with files missing)``: ``done`` and ``mask``,
        then the listing of the chunk files (``emostore verify`` also checks their bytes)."""
        done = self.done()
        mask = self._flags("mask") & done
        missing = sorted(self.damaged_chunks(checksums=False, done=done))
        return int(done.sum()), int(mask.sum()), int((done & ~mask).sum()), missing

    def summary(self) -> dict[str, Any]:
        rows_done, rows_valid, rows_failed, missing = self.counts()
        a = self.attrs
        return {
            "dim": self.dim,
            "seq_dim": self.seq_dim,
            "dtype": a.get("dtype", "float32"),
            "rows": self.n_rows,
            "rows_done": rows_done,
            "rows_valid": rows_valid,
            "rows_failed": rows_failed,
            "complete": rows_done == self.n_rows,
            "chunks_missing": missing,
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
        arrays.writable(self.array("values"))[sl] = values
        arrays.writable(self.array("mask"))[sl] = ok
        arrays.writable(self.array("error"))[sl] = errors
        arrays.writable(self.array("done"))[sl] = np.ones(n, dtype=bool)  # last: the chunk counts only once complete

    def mark_pending(self, chunks: list[int]) -> None:
        """Set ``done`` to False for ``chunks`` (their rows are computed again by the next extract)."""
        done = self.array("done")
        for c in chunks:
            sl = self.chunk_slice(c)
            arrays.writable(done)[sl] = np.zeros(sl.stop - sl.start, dtype=bool)

    def _write_sequences(self, chunk: int, sl: slice, ok: np.ndarray,
                         sequences: Sequence[np.ndarray | None] | None) -> None:
        d = int(self.seq_dim or 0)
        seqs = [np.asarray(s, dtype=np.float32).reshape(-1, d) if (s is not None and good) else
                np.zeros((0, d), np.float32) for s, good in zip(sequences or [None] * len(ok), ok)]
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        frames = np.concatenate(seqs) if seqs else np.zeros((0, d), np.float32)
        arr = arrays.create(self.group.require_group("seq"), str(chunk), shape=frames.shape,
                            chunks=(max(1, min(len(frames), 8192)), d), dtype="float32", fill_value=np.nan,
                            overwrite=True)
        if len(frames):
            arr[:] = frames
        arrays.writable(self.array("seq_lengths"))[sl] = lengths

    # ----- reading -----------------------------------------------------------------------
    def read_sequence(self, row: int) -> np.ndarray:
        """The [T, seq_dim] frame sequence of one row, reading only that row's frames."""
        if not self.seq_dim:
            raise UserError(f"feature set {self.name!r} keeps no frame sequences")
        chunk = row // self.chunk_rows
        sl = self.chunk_slice(chunk)
        if not bool(self._read("done", row)):
            return np.zeros((0, self.seq_dim), np.float32)
        lengths = self.chunk_frames(chunk)[0]
        start = int(lengths[: row - sl.start].sum())
        return self.chunk_frames(chunk)[1][start:start + int(lengths[row - sl.start])]

    def chunk_frames(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """``(lengths, frames)`` of one done chunk: the rows' frame counts and their frames, end to end."""
        sl = self.chunk_slice(chunk)
        lengths = self._read("seq_lengths", sl).astype(np.int64)
        try:
            arr = self.group["seq"][str(chunk)]
            frames = np.asarray(arr[:], dtype=np.float32)
        except Exception as exc:  # noqa: BLE001  (missing or unreadable frames of a done chunk)
            raise self.damaged(f"its frames cannot be read ({_short(exc)})", chunk) from None
        if len(frames) != int(lengths.sum()) or not np.isfinite(frames).all():
            raise self.damaged(f"its frames do not match their lengths ({len(frames)} frames stored, "
                               f"{int(lengths.sum())} recorded)", chunk)
        return lengths, frames

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
            lengths, frames = self.chunk_frames(chunk)
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            for k in ks:
                i = int(rows[k]) - sl.start
                out[k] = frames[offsets[i]:offsets[i + 1]]
        return out

    def read_values(self, rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """``(X, mask)`` of a range of rows (all by default), checked as :meth:`read`, without the ids."""
        X = self._read("values", rows).astype(np.float32, copy=False)
        done = self._read("done", rows).astype(bool)
        mask = self._read("mask", rows).astype(bool) & done
        self._check_rows(np.arange(*rows.indices(self.n_rows)), X, mask, done)
        X[~mask] = np.nan
        return X, mask

    def read(self, rows: np.ndarray | slice | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids, X, mask)`` for ``rows`` (all rows by default); invalid rows are NaN in X."""
        if rows is None:
            rows = slice(None)
        if isinstance(rows, slice):
            return (self._ids[rows], *self.read_values(rows))
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if len(rows) == self.n_rows and (rows == np.arange(self.n_rows)).all():
            X = self._read("values").astype(np.float32, copy=False)
        elif len(rows):
            X = self._oindex(rows)
        else:
            X = np.zeros((0, self.dim), np.float32)
        done = self.done()[rows]
        mask = self._flags("mask")[rows] & done
        self._check_rows(rows, X, mask, done)
        X[~mask] = np.nan
        return self._ids[rows], X, mask

    def _oindex(self, rows: np.ndarray) -> np.ndarray:
        arr = self.array("values")
        try:
            return np.asarray(arr.oindex[rows, :], dtype=np.float32)
        except Exception:  # noqa: BLE001  (name the damaged chunk)
            self._read("values")
            raise

    def _check_rows(self, rows: np.ndarray, X: np.ndarray, mask: np.ndarray, done: np.ndarray) -> None:
        """Rows whose files contradict ``done``: valid without values (a lost values chunk), or
        failed without a reason (a lost mask or error chunk)."""
        lost = mask & ~np.isfinite(X).all(1)
        if lost.any():
            raise self.damaged("a finished, valid row has no values (its values chunk is missing)",
                               int(rows[np.argmax(lost)]) // self.chunk_rows)
        failed = done & ~mask
        if failed.any():
            lo, hi = int(rows[failed].min()), int(rows[failed].max()) + 1
            reasons = self._read("error", slice(lo, hi))[rows[failed] - lo]
            if (reasons == "").any():
                row = int(rows[failed][np.argmax(reasons == "")])
                raise self.damaged("a finished row is marked invalid without a reason (its mask or error chunk "
                                   "is missing)", row // self.chunk_rows)


def _short(exc: BaseException) -> str:
    """The first line of an exception, cut short (checksum errors print whole byte strings)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 80 else text[:77] + "..."
