"""Feature vectors read from the store a window of rows at a time, for features that do not fit
the memory budget (:mod:`emostore.heads.memory`).

- :func:`feature_stats`: the standardisation statistics in one streaming pass over the chunks
  (per-chunk mean and sum of squared deviations, merged as Chan et al.'s parallel variance).
- :class:`FeatureReader`: the standardised vectors of some rows, reading only the chunks that
  hold them, a run of neighbouring chunks per call.
- :func:`plan_windows`: which units (rows, or whole dialogues for dialogue heads) go together
  into a window. Units are grouped by the chunk they start in; training visits these groups in a
  random order (``rng``, so ``--seed`` reproduces it) and fills a window, the shuffle buffer,
  whose units are then shuffled into batches. Prediction visits them in store order. Every unit
  is in exactly one window, so an epoch sees every training row once.
- :func:`prefetch`: a background thread reads the next window while the current one trains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

#: Standard deviations below this are treated as constant features (divided by 1).
MIN_STD = 1e-6
#: Most bytes of vectors in one window (a larger budget does not make windows larger: past this
#: size a window mixes rows well enough, and smaller windows keep the peak memory low).
MAX_WINDOW_BYTES = 256 * 2**20
#: Neighbouring chunks read in one call.
RUN_CHUNKS = 16

T = TypeVar("T")
R = TypeVar("R")


def chunk_runs(rows: np.ndarray, chunk_rows: int, n_rows: int) -> Iterator[tuple[slice, slice]]:
    """``(store slice, positions in rows)`` per run of up to :data:`RUN_CHUNKS` neighbouring chunks
    holding the sorted ``rows``."""
    if not len(rows):
        return
    chunks = rows // chunk_rows
    touched = np.unique(chunks)
    breaks = np.flatnonzero((np.diff(touched) != 1) | (np.arange(1, len(touched)) % RUN_CHUNKS == 0)) + 1
    for run in np.split(touched, breaks):
        lo, hi = int(run[0]) * chunk_rows, min((int(run[-1]) + 1) * chunk_rows, n_rows)
        a, b = np.searchsorted(rows, [lo, hi])
        yield slice(lo, hi), slice(int(a), int(b))


def feature_stats(fs: Any, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (float32, constant dims get 1) of the rows of ``fs`` where
    ``keep`` (a row mask, e.g. train & valid), in one pass over its chunks."""
    n, mean, m2 = 0, np.zeros(fs.dim), np.zeros(fs.dim)
    rows = np.flatnonzero(keep)
    for sl, pos in chunk_runs(rows, fs.chunk_rows, fs.n_rows):
        X, _ = fs.read_values(sl)
        n, mean, m2 = merge_moments((n, mean, m2), X[rows[pos] - sl.start])
    if n == 0:
        return np.zeros(fs.dim, np.float32), np.ones(fs.dim, np.float32)
    return finish_moments(mean, m2, n)


def merge_moments(acc: tuple[int, np.ndarray, np.ndarray], X: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Add the rows ``X`` to running ``(count, mean, sum of squared deviations)`` (float64)."""
    n, mean, m2 = acc
    k = len(X)
    if not k:
        return acc
    block_mean = X.mean(0, dtype=np.float64)
    block_m2 = ((X - block_mean) ** 2).sum(0, dtype=np.float64)
    total = n + k
    delta = block_mean - mean
    return total, mean + delta * (k / total), m2 + block_m2 + delta**2 * (n * k / total)


def finish_moments(mean: np.ndarray, m2: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    std = np.sqrt(m2 / n).astype(np.float32)
    return mean.astype(np.float32), np.where(std < MIN_STD, np.float32(1.0), std)


def standardise(X: np.ndarray, mask: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(X - mean) / std`` where ``mask``, exactly 0 elsewhere: in place (``X``, float32, is the
    caller's to overwrite; no copy of millions of rows is made)."""
    X -= mean
    X /= std
    X[~mask] = 0.0
    return X


@dataclass
class FeatureReader:
    """Reads standardised feature vectors of some rows from the store (see the module)."""

    sets: list[Any]                                  # FeatureSet per feature set
    stats: list[tuple[np.ndarray, np.ndarray]]       # (mean, std) per feature set

    @property
    def row_bytes(self) -> int:
        return 4 * sum(fs.dim for fs in self.sets)

    @property
    def chunk_rows(self) -> int:
        return int(self.sets[0].chunk_rows)

    def read(self, rows: np.ndarray) -> list[Tensor]:
        """``[len(rows), D_m]`` float32 per feature set, for the sorted store ``rows``."""
        out = []
        for fs, (mean, std) in zip(self.sets, self.stats):
            Z = np.empty((len(rows), fs.dim), np.float32)
            for sl, pos in chunk_runs(rows, fs.chunk_rows, fs.n_rows):
                X, mask = fs.read_values(sl)
                local = rows[pos] - sl.start
                np.take(X, local, axis=0, out=Z[pos], mode="clip")  # "clip": unbuffered
                standardise(Z[pos], mask[local], mean, std)
            out.append(torch.from_numpy(Z))
        return out

    def window_rows(self, budget: int) -> int:
        """Rows per window: a quarter of the budget (a window trains while the next one is read,
        each with its raw and standardised copy), at most :data:`MAX_WINDOW_BYTES`, at least a chunk."""
        return max(self.chunk_rows, min(budget // 4, MAX_WINDOW_BYTES) // max(self.row_bytes, 1))


def plan_windows(units: np.ndarray | list[np.ndarray], chunk_rows: int, window_rows: int,
                 rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Indices into ``units`` (rows, or row arrays of dialogues) of each window (see the module)."""
    if isinstance(units, np.ndarray):
        first, size = units, np.ones(len(units), dtype=np.int64)
    else:
        first = np.array([int(u.min()) for u in units], dtype=np.int64)
        size = np.array([len(u) for u in units], dtype=np.int64)
    order = np.argsort(first // chunk_rows, kind="stable")
    home = (first // chunk_rows)[order]
    starts = np.flatnonzero(np.r_[True, home[1:] != home[:-1]]) if len(home) else np.zeros(0, dtype=np.int64)
    groups = np.split(order, starts[1:])
    if rng is not None:
        groups = [groups[i] for i in rng.permutation(len(groups))]
    windows, current, rows = [], [], 0
    for g in groups:
        current.append(g)
        rows += int(size[g].sum())
        if rows >= window_rows:
            windows.append(np.concatenate(current))
            current, rows = [], 0
    if current:
        windows.append(np.concatenate(current))
    return windows


def prefetch(load: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """``load(item)`` for each item, the next one loaded by a background thread meanwhile."""
    end = object()
    it = iter(items)
    with ThreadPoolExecutor(1, thread_name_prefix="emostore-prefetch") as pool:
        first = next(it, end)
        pending = pool.submit(load, first) if first is not end else None  # type: ignore[arg-type]
        while pending is not None:
            result = pending.result()
            nxt = next(it, end)
            pending = pool.submit(load, nxt) if nxt is not end else None  # type: ignore[arg-type]
            yield result
