"""The one extraction loop: pending chunks of this shard -> encoder -> write -> mark done."""

from __future__ import annotations

import logging
import multiprocessing as mp
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from emostore.extract.base import Encoded, Encoder
from emostore.store import Shard, Store

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
                   chunk_rows: int | None = None, progress: bool = True, workers: int = 1) -> RunReport:
    """Fill ``encoder.feature_set`` in ``store`` for the chunks this shard owns that are not done.

    Killing the process at any point loses at most the chunks in flight; running again resumes.
    With ``workers > 1``, blocks of rows go to that many processes, each with its own encoder
    (rebuilt from its stored configuration); the main process alone writes.
    """
    fs = store.create_feature_set(encoder.feature_set, dim=encoder.dim, config=encoder.stored_config,
                                  encoder=encoder.kind, version=encoder.version(),
                                  chunk_rows=chunk_rows or encoder.chunk_rows,
                                  seq_dim=encoder.seq_dim, overwrite=overwrite)
    table = store.table
    pending = fs.pending_chunks(shard)
    total_rows = sum(fs.chunk_slice(c).stop - fs.chunk_slice(c).start for c in pending)
    report = RunReport(encoder.feature_set, fs.config_hash, fs.n_chunks, 0, 0, 0, False)
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
                sl = fs.chunk_slice(chunk)
                rows = np.arange(sl.start, sl.stop)
                if pool is None:
                    out = encoder.encode_rows(table, rows, progress=lambda n: bar.advance(task, n))
                else:
                    parts = []
                    for block, fut in futures.pop(chunk):
                        try:
                            parts.append(fut.result())
                        except Exception as exc:  # noqa: BLE001  (an encoder bug must not stop the batch)
                            if type(exc).__name__ == "BrokenProcessPool":
                                raise
                            parts.append(_failed(len(block), encoder.dim, f"encoder error: {exc!r}"))
                        bar.advance(task, len(block))
                    out = Encoded.concat(parts)
                fs.write_chunk(chunk, out.values, out.ok, out.reasons, out.sequences)
                report.chunks_run += 1
                report.rows_run += len(rows)
                bad = np.flatnonzero(~np.asarray(out.ok, dtype=bool))
                report.rows_failed += len(bad)
                report.failures.extend((str(table["id"].iat[rows[i]]), out.reasons[i]) for i in bad)
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    if report.chunks_run:
        store.touch_feature_set(encoder.feature_set)
    report.complete = fs.is_complete()
    return report


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
