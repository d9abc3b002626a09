"""The one extraction loop: pending chunks of this shard -> encoder -> write -> mark done.

:func:`~emostore.extract.chunk.extract_chunk` is the unit of work, the same code in a local run
and in a task on a Dask cluster (:mod:`emostore.extract.cluster`).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import os
import sys
import types
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

from emostore.core.progress import progress_bar
from emostore.errors import UserError
from emostore.extract import worker
from emostore.extract.base import Encoded, Encoder, EncoderSpec
from emostore.extract.chunk import RunReport, extract_chunk
from emostore.store import FeatureSet, Shard, Store

log = logging.getLogger(__name__)


#: Thread-count variables of the OpenMP and BLAS runtimes (PyTorch's CPU threads follow OMP_NUM_THREADS).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@contextmanager
def _spawning(threads: int) -> Iterator[None]:
    """While worker processes are spawned: hide the ``__main__`` module (a spawned child otherwise
    imports the parent's main module again, for the command line all of ``emostore.cli``, which
    workers never need; every function they run lives in :mod:`emostore.extract.worker`), and give
    the children ``threads`` OpenMP/BLAS threads each unless the user set a count, so that N workers
    share the cores instead of each starting one thread per core (oversubscribed, a PyTorch encoder
    in 2 workers on 2 cores ran 2.2x slower than in one process)."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    saved = {k: os.environ.get(k) for k in THREAD_VARIABLES}
    for k in THREAD_VARIABLES:
        os.environ.setdefault(k, str(threads))
    try:
        yield
    finally:
        sys.modules["__main__"] = main
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


def start_workers(n: int, build: EncoderSpec | None = None) -> ProcessPoolExecutor:
    """``n`` worker processes, started now, so that they load while the caller goes on (opening the
    store, building its own encoder). With ``build`` (see :func:`emostore.extract.worker.start`)
    each worker builds its encoder right away too."""
    pool = ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=worker.start, initargs=(build,))
    with _spawning(max(1, (os.cpu_count() or 1) // n)):
        for _ in range(n):  # with spawn, each submit starts one more process until there are n
            pool.submit(worker.ready)
    return pool


def run_extraction(store: Store, encoder: Encoder, *, shard: Shard = Shard(), overwrite: bool = False,
                   chunk_rows: int | None = None, progress: bool = True, workers: int = 1,
                   cluster: Any = None, pool: ProcessPoolExecutor | None = None) -> RunReport:
    """Fill ``encoder.feature_set`` in ``store`` for the chunks this shard owns that are not done.

    Killing the process at any point loses at most the chunks in flight; running again resumes.
    With ``workers > 1``, blocks of rows go to that many processes, each with its own encoder
    (rebuilt from its stored configuration); the main process alone writes. With ``cluster``
    (``local:N``, a scheduler address or a ``distributed.Client``), each pending chunk is a task
    on a Dask cluster whose workers write it themselves. ``pool``: local workers already started
    (:func:`start_workers`); the caller shuts them down.
    """
    fs = store.create_feature_set(encoder.feature_set, dim=encoder.dim, config=encoder.stored_config,
                                  encoder=encoder.kind, version=encoder.version(),
                                  chunk_rows=chunk_rows or encoder.chunk_rows,
                                  seq_dim=encoder.seq_dim, layers=getattr(encoder, "stacked_layers", None),
                                  overwrite=overwrite)
    pending = fs.pending_chunks(shard, check=True)  # damaged chunks (missing files, bad checksums) again
    report = RunReport(encoder.feature_set, fs.config_hash, fs.n_chunks, 0, 0, 0, False)
    report.chunks_damaged = len(set(pending) - set(fs.pending_chunks(shard)))
    if cluster is not None:
        from emostore.extract.cluster import run_on_cluster

        run_on_cluster(cluster, store, encoder, fs, pending, report, progress=progress)
        return _finish(store, fs, report)
    table = store.table
    total_rows = sum(fs.chunk_slice(c).stop - fs.chunk_slice(c).start for c in pending)
    own_pool = pool is None and workers > 1 and bool(pending)
    if own_pool:
        pool = start_workers(workers)  # they load while the table is read
    spec = encoder.spec
    try:
        with progress_bar(enabled=progress) as bar:
            task = bar.add_task(f"{encoder.feature_set}", total=total_rows)
            futures = _submit_all(pool, spec, table, fs, pending, encoder.block_rows) if pool else {}
            for chunk in pending:
                advance = functools.partial(bar.advance, task)
                if pool is None:
                    encode = functools.partial(encoder.encode_rows, table, progress=advance)
                else:
                    encode = functools.partial(_gather, futures.pop(chunk), chunk, advance)
                report.add(extract_chunk(fs, table, chunk, encode))
    finally:
        if own_pool and pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    return _finish(store, fs, report)


def _finish(store: Store, fs: FeatureSet, report: RunReport) -> RunReport:
    if report.chunks_run:
        store.touch_feature_set(fs.name)
    report.complete = fs.is_complete()
    return report


def _gather(blocks: list[tuple[np.ndarray, Future[Encoded]]], chunk: int, advance: Callable[[int], Any],
            rows: np.ndarray) -> Encoded:
    """The encoded rows of one chunk from its blocks' futures. As in one process, an encoder that
    raises stops the run: the chunk stays pending (a rerun retries it) and finished chunks are
    kept; only rows the encoder itself reports as failed (unreadable media) are failed rows."""
    from concurrent.futures.process import BrokenProcessPool

    parts = []
    for block, fut in blocks:
        try:
            parts.append(fut.result())
        except BrokenProcessPool:
            raise UserError(f"a worker process died while encoding chunk {chunk} (out of memory?); the chunk "
                            "stays pending and finished chunks are kept: run the same command again") from None
        advance(len(block))
    return Encoded.concat(parts)


def _submit_all(pool: ProcessPoolExecutor, spec: EncoderSpec, table: pd.DataFrame, fs: Any, chunks: list[int],
                block_rows: int) -> dict[int, list[tuple[np.ndarray, Future[Encoded]]]]:
    """Queue every block of every pending chunk, so workers never wait for the writer. A block goes with
    the other turns of its dialogues, so encoders that read surrounding turns see them as in one process."""
    dialogues = table["dialogue"] if "dialogue" in table.columns else None
    members = dialogues.groupby(dialogues, sort=False).indices if dialogues is not None else {}
    out: dict[int, list[tuple[np.ndarray, Future[Encoded]]]] = {}
    for chunk in chunks:
        sl = fs.chunk_slice(chunk)
        rows = np.arange(sl.start, sl.stop)
        out[chunk] = []
        for i in range(0, len(rows), block_rows):
            block = rows[i:i + block_rows]
            keys = dialogues.iloc[block].dropna().unique() if dialogues is not None else []
            with_turns = np.union1d(block, np.concatenate([members[k] for k in keys])) if len(keys) else block
            positions = np.searchsorted(with_turns, block)
            out[chunk].append((block, pool.submit(worker.encode_block, spec, table.iloc[with_turns], positions)))
    return out
