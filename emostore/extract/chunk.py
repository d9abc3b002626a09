"""The unit of work of every extraction (one chunk of rows, ``done`` written last) and what a
run reports; shared by the local loop (:mod:`~emostore.extract.runner`) and cluster tasks
(:mod:`~emostore.extract.cluster`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from emostore.extract.base import Encoded
from emostore.store import FeatureSet


@dataclass
class RunReport:
    feature_set: str
    config_hash: str
    chunks_total: int
    chunks_run: int
    rows_run: int
    rows_failed: int
    complete: bool
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: Chunks whose task failed on a cluster (after its retries): left pending for a rerun.
    chunk_errors: list[tuple[int, str]] = field(default_factory=list)
    #: Encoders loaded by cluster workers (one per worker that ran a chunk).
    encoder_loads: int = 0
    #: Finished chunks found damaged (missing files, failed checksums) and computed again.
    chunks_damaged: int = 0
    #: Seconds spent encoding and writing chunks, summed over the processes that ran them.
    encode_seconds: float = 0.0
    write_seconds: float = 0.0

    def add(self, done: ChunkDone) -> None:
        self.encoder_loads += int(done.encoder_loaded)
        self.encode_seconds += done.encode_seconds
        self.write_seconds += done.write_seconds
        self.chunks_run += 1
        self.rows_run += done.rows
        self.rows_failed += len(done.failures)
        self.failures.extend(done.failures)


@dataclass
class ChunkDone:
    chunk: int
    rows: int
    failures: list[tuple[str, str]]
    encoder_loaded: bool = False  # this task loaded its worker's encoder (the first on that worker)
    encode_seconds: float = 0.0
    write_seconds: float = 0.0


def extract_chunk(fs: FeatureSet, table: pd.DataFrame, chunk: int,
                  encode: Callable[[np.ndarray], Encoded]) -> ChunkDone:
    """Encode the rows of ``chunk`` and write them, ``done`` last: the unit of work of every run."""
    sl = fs.chunk_slice(chunk)
    rows = np.arange(sl.start, sl.stop)
    t0 = time.perf_counter()
    out = encode(rows)
    t1 = time.perf_counter()
    fs.write_chunk(chunk, out.values, out.ok, out.reasons, out.sequences)
    bad = np.flatnonzero(~np.asarray(out.ok, dtype=bool))
    return ChunkDone(chunk, len(rows), [(str(table["id"].iat[rows[i]]), out.reasons[i]) for i in bad],
                     encode_seconds=t1 - t0, write_seconds=time.perf_counter() - t1)
