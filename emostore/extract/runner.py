"""The one extraction loop: pending chunks of this shard -> encoder -> write -> mark done."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from emostore.extract.base import Encoder
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


def run_extraction(store: Store, encoder: Encoder, *, shard: Shard = Shard(), overwrite: bool = False,
                   chunk_rows: int | None = None, progress: bool = True) -> RunReport:
    """Fill ``encoder.feature_set`` in ``store`` for the chunks this shard owns that are not done.

    Killing the process at any point loses at most the chunk in flight; running again resumes.
    """
    fs = store.create_feature_set(encoder.feature_set, dim=encoder.dim, config=encoder.config,
                                  encoder=encoder.kind, version=encoder.version(),
                                  chunk_rows=chunk_rows, overwrite=overwrite)
    table = store.table
    pending = fs.pending_chunks(shard)
    total_rows = sum(fs.chunk_slice(c).stop - fs.chunk_slice(c).start for c in pending)
    report = RunReport(encoder.feature_set, fs.config_hash, fs.n_chunks, 0, 0, 0, False)
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task(f"{encoder.feature_set}", total=total_rows)
        for chunk in pending:
            sl = fs.chunk_slice(chunk)
            rows = np.arange(sl.start, sl.stop)
            out = encoder.encode_rows(table, rows, progress=lambda n: bar.advance(task, n))
            fs.write_chunk(chunk, out.values, out.ok, out.reasons)
            report.chunks_run += 1
            report.rows_run += len(rows)
            bad = np.flatnonzero(~np.asarray(out.ok, dtype=bool))
            report.rows_failed += len(bad)
            report.failures.extend((str(table["id"].iat[rows[i]]), out.reasons[i]) for i in bad)
    if report.chunks_run:
        store.touch_feature_set(encoder.feature_set)
    report.complete = fs.is_complete()
    return report
