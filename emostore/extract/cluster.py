"""Extraction on a Dask cluster: one task per pending chunk, one encoder per worker.

The client creates the feature set (so no two workers ever race to create it), registers a worker
plugin that rebuilds the encoder from its stored configuration (its
:class:`~emostore.extract.base.EncoderSpec`), and submits one task per
pending chunk. Each worker loads the encoder and the utterance table once, on its first task, and
runs :func:`emostore.extract.runner.extract_chunk` (the same code as a local run): it writes its
chunk straight into the store, ``done`` last. The client only schedules and shows progress.

A task on a worker that dies is rescheduled on another (the scheduler's ``allowed-failures``); a
task that raises is retried (``retries``) and, if it still fails, its chunk stays pending for a
rerun. A killed or interrupted client leaves only finished chunks marked done, so rerunning the
same command completes the store.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from typing import Any

from emostore.cluster import RETRIES, connect, require_distributed
from emostore.core.progress import progress_bar
from emostore.extract.base import Encoder
from emostore.extract.chunk import ChunkDone, RunReport, extract_chunk
from emostore.store import FeatureSet, Location, Store

distributed = require_distributed()
log = logging.getLogger(__name__)


class EncoderPlugin(distributed.WorkerPlugin):
    """What a worker needs to run chunks of one extraction; the encoder is built once per worker.

    Registered with ``Client.register_plugin``; Dask calls :meth:`setup` on every worker, including
    workers that join (or restart) later. Chunks run one at a time per worker (one encoder, whose
    forward pass already uses the worker's cores).
    """

    idempotent = False

    def __init__(self, location: Location, feature_set: str, encoder: Encoder):
        self.location = location
        self.feature_set = feature_set
        self.spec = encoder.spec
        self._lock: threading.Lock | None = None
        self._encoder: Encoder | None = None
        self._store: Store | None = None
        self._fs: FeatureSet | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=None, _encoder=None, _store=None, _fs=None)

    def setup(self, worker: Any = None) -> None:
        self._lock = threading.Lock()

    def teardown(self, worker: Any = None) -> None:
        if self._encoder is not None:
            self._encoder.close()
        self._encoder = None

    def run_chunk(self, chunk: int) -> ChunkDone:
        if self._lock is None:
            self.setup()
        assert self._lock is not None
        with self._lock:
            loaded = self._encoder is None
            if loaded:
                self._store = Store.open(self.location)
                self._fs = self._store.feature_set(self.feature_set)
                self._encoder = self.spec.build()
            store, fs, encoder = self._store, self._fs, self._encoder
            assert store is not None and fs is not None and encoder is not None
            table = store.table
            done = extract_chunk(fs, table, chunk, lambda rows: encoder.encode_rows(table, rows))
            done.encoder_loaded = loaded
            return done


def _run_chunk(plugin: str, chunk: int) -> ChunkDone:
    """The task: run ``chunk`` with this worker's plugin ``plugin``."""
    return distributed.get_worker().plugins[plugin].run_chunk(chunk)


def run_on_cluster(cluster: Any, store: Store, encoder: Encoder, fs: FeatureSet, pending: list[int],
                   report: RunReport, *, progress: bool = True) -> None:
    """Run ``pending`` chunks of ``fs`` on ``cluster``; results and failed chunks go to ``report``."""
    if not pending:
        return
    total = sum(fs.chunk_slice(c).stop - fs.chunk_slice(c).start for c in pending)
    token = hashlib.sha256(f"{store.url}|{fs.name}|{fs.config_hash}".encode()).hexdigest()[:10]
    name = f"emostore-extract-{token}"
    with connect(cluster, quiet=not progress) as client:
        client.register_plugin(EncoderPlugin(store.location, fs.name, encoder), name=name)
        run = uuid.uuid4().hex[:8]
        futures = {client.submit(_run_chunk, name, c, key=f"emostore-chunk-{c}-{run}", retries=RETRIES,
                                 pure=False): c for c in pending}
        try:
            with progress_bar(enabled=progress,
                              counts="{task.completed:.0f}/{task.total:.0f} rows, {task.fields[failed]} failed") as bar:
                task = bar.add_task(fs.name, total=total, failed=0)
                for fut in distributed.as_completed(futures):
                    chunk = futures[fut]
                    try:
                        done: ChunkDone = fut.result()
                    except Exception as exc:  # noqa: BLE001  (one failed chunk must not stop the others)
                        report.chunk_errors.append((chunk, f"{type(exc).__name__}: {exc}"))
                        continue
                    report.add(done)
                    bar.update(task, advance=done.rows, failed=report.rows_failed)
        finally:
            client.cancel(list(futures))
            try:
                client.unregister_worker_plugin(name)
            except Exception as exc:  # noqa: BLE001  (the cluster may be gone already: nothing to clean)
                log.debug("could not unregister %s: %s", name, exc)
