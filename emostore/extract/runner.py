"""The one extraction loop: pending chunks of this shard -> encoder -> write -> mark done.

:func:`extract_chunk` is the unit of work, the same code in a local run and in a task on a Dask
cluster (:mod:`emostore.extract.cluster`).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from emostore.extract.base import Encoded, Encoder
from emostore.store import FeatureSet, Shard, Store

log = logging.getLogger(__name__)


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


_WORKER: Encoder | None = None


def _start_worker(cls: type[Encoder], config: dict[str, Any], name: str, runtime: dict[str, Any]) -> None:
    global _WORKER
    _WORKER = cls.from_config(config, name=name, **runtime)


def _encode_block(block: pd.DataFrame) -> Encoded:
    assert _WORKER is not None
    return _WORKER.encode_rows(block.reset_index(drop=True), np.arange(len(block)))


def _failed(n: int, dim: int, reason: str) -> Encoded:
    return Encoded(np.full((n, dim), np.nan, np.float32), np.zeros(n, bool), [reason] * n)


def run_extraction(store: Store, encoder: Encoder, *, shard: Shard = Shard(), overwrite: bool = False,
                   chunk_rows: int | None = None, progress: bool = True, workers: int = 1,
                   cluster: Any = None) -> RunReport:
    """Fill ``encoder.feature_set`` in ``store`` for the chunks this shard owns that are not done.

    Killing the process at any point loses at most the chunks in flight; running again resumes.
    With ``workers > 1``, blocks of rows go to that many processes, each with its own encoder
    (rebuilt from its stored configuration); the main process alone writes. With ``cluster``
    (``local:N``, a scheduler address or a ``distributed.Client``), each pending chunk is a task
    on a Dask cluster whose workers write it themselves.
    """
    fs = store.create_feature_set(encoder.feature_set, dim=encoder.dim, config=encoder.stored_config,
                                  encoder=encoder.kind, version=encoder.version(),
                                  chunk_rows=chunk_rows or encoder.chunk_rows,
                                  seq_dim=encoder.seq_dim, overwrite=overwrite)
    pending = fs.pending_chunks(shard)
    report = RunReport(encoder.feature_set, fs.config_hash, fs.n_chunks, 0, 0, 0, False)
    if cluster is not None:
        from emostore.extract.cluster import run_on_cluster

        run_on_cluster(cluster, store, encoder, fs, pending, report, progress=progress)
        return _finish(store, fs, report)
    table = store.table
    total_rows = sum(fs.chunk_slice(c).stop - fs.chunk_slice(c).start for c in pending)
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    pool = None
    if workers > 1 and pending:
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_start_worker,
                                   initargs=(type(encoder), encoder.stored_config, encoder.name, encoder.runtime))
    try:
        with Progress(*columns, disable=not progress, transient=False) as bar:
            task = bar.add_task(f"{encoder.feature_set}", total=total_rows)
            futures = _submit_all(pool, table, fs, pending, encoder.block_rows) if pool else {}
            for chunk in pending:
                advance = functools.partial(bar.advance, task)
                if pool is None:
                    encode = functools.partial(encoder.encode_rows, table, progress=advance)
                else:
                    encode = functools.partial(_gather, futures.pop(chunk), encoder.dim, advance)
                report.add(extract_chunk(fs, table, chunk, encode))
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    return _finish(store, fs, report)


def _finish(store: Store, fs: FeatureSet, report: RunReport) -> RunReport:
    if report.chunks_run:
        store.touch_feature_set(fs.name)
    report.complete = fs.is_complete()
    return report


def _gather(blocks: list[tuple[np.ndarray, Future[Encoded]]], dim: int, advance: Callable[[int], Any],
            rows: np.ndarray) -> Encoded:
    """The encoded rows of one chunk from its blocks' futures; a block whose encoder raised fails alone."""
    parts = []
    for block, fut in blocks:
        try:
            parts.append(fut.result())
        except Exception as exc:  # an encoder bug must not stop the batch
            if type(exc).__name__ == "BrokenProcessPool":
                raise
            parts.append(_failed(len(block), dim, f"encoder error: {exc!r}"))
        advance(len(block))
    return Encoded.concat(parts)


def _submit_all(pool: ProcessPoolExecutor, table: pd.DataFrame, fs: Any, chunks: list[int],
                block_rows: int) -> dict[int, list[tuple[np.ndarray, Future[Encoded]]]]:
    """Queue every block of every pending chunk, so workers never wait for the writer."""
    out: dict[int, list[tuple[np.ndarray, Future[Encoded]]]] = {}
    for chunk in chunks:
        sl = fs.chunk_slice(chunk)
        rows = np.arange(sl.start, sl.stop)
        out[chunk] = [(rows[i:i + block_rows], pool.submit(_encode_block, table.iloc[rows[i:i + block_rows]]))
                      for i in range(0, len(rows), block_rows)]
    return out
