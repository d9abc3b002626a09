"""``emostore extract``: build the encoder from the command's options, run the extraction
(locally, in worker processes or on a cluster) and say what it did."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from emostore.cluster import dashboard_at
from emostore.errors import UserError
from emostore.extract.base import EncoderSpec, build_encoder, encoder_class
from emostore.extract.chunk import RunReport
from emostore.extract.runner import run_extraction, start_workers
from emostore.store import Shard, Store


@dataclass
class Extraction:
    """What ``extract`` reports: the run, and the encoder that made it."""

    report: RunReport
    kind: str
    dim: int
    seq_dim: int | None
    device: str
    workers: int

    def to_dict(self) -> dict[str, Any]:
        r = self.report
        return {"feature_set": r.feature_set, "encoder": self.kind, "config_hash": r.config_hash, "dim": self.dim,
                "seq_dim": self.seq_dim, "device": self.device, "workers": self.workers, "chunks_run": r.chunks_run,
                "chunks_total": r.chunks_total, "rows_run": r.rows_run, "rows_failed": r.rows_failed,
                "complete": r.complete, "chunks_damaged": r.chunks_damaged,
                "failures": [{"id": i, "reason": why} for i, why in r.failures]}


def extract(store: str, modality: str, kind: str, options: dict[str, Any], runtime: dict[str, Any], *,
            name: str | None = None, shard: str | None = None, chunk_rows: int | None = None, workers: int = 1,
            overwrite: bool = False, cluster: str | None = None, dashboard_address: str | None = None,
            progress: bool = False) -> Extraction:
    """Fill a feature set of ``store``. A feature set in which no utterance at all could be
    encoded is removed again (it would only hold failures) and refused in one line."""
    if cluster and workers > 1:
        raise UserError("--workers and --cluster do not mix: a cluster's workers are its own (local:N for N here)")
    if "store" in encoder_class(modality, kind).runtime_options():  # encoders that record paths relative to it
        runtime = {**runtime, "store": store}
    # workers start first and build their encoders while this process opens the store and builds its own
    pool = start_workers(workers, EncoderSpec.requested(modality, kind, options, runtime, name)) \
        if workers > 1 else None
    try:
        st = Store.open(store)
        existed = set(st.feature_set_names(include_damaged=True))
        with build_encoder(modality, kind, options, runtime, name=name) as enc, dashboard_at(dashboard_address):
            report = run_extraction(st, enc, shard=Shard.parse(shard), overwrite=overwrite, chunk_rows=chunk_rows,
                                    workers=workers, cluster=cluster, pool=pool, progress=progress)
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    if report.rows_run and report.complete and not st.feature_set(report.feature_set).mask().any():
        reasons = Counter(r for _, r in report.failures).most_common(1)
        kept = report.feature_set in existed
        if not kept:
            st.remove_feature_set(report.feature_set)
        raise UserError(f"{store}: none of its {len(st)} utterances could be encoded into {report.feature_set} "
                        f"(e.g. {reasons[0][0] if reasons else 'no input'}); "
                        + ("it holds only failures" if kept else "nothing was kept")
                        + f"; `emostore info {store}` shows what the store holds")
    if report.chunk_errors:  # cluster tasks that failed after their retries: pending, say so, exit 1
        first = "; ".join(f"chunk {c}: {why}" for c, why in report.chunk_errors[:3])
        raise UserError(f"{len(report.chunk_errors)} chunks failed on the cluster and stay pending ({first}); "
                        "run the same command again to retry them")
    return Extraction(report, enc.kind, enc.dim, enc.seq_dim, getattr(enc, "device", "cpu"), workers)
