"""A sweep on a Dask cluster: one task per run (a head, a setting, a seed, a feature combination).

Workers open the store themselves (a path every worker reaches, or a URL on object storage) and
keep the features of the last combination they loaded, so a worker loads each combination once,
as a local sweep does. Each task runs :func:`emostore.heads.sweep.run_one`, the same code as a
local sweep; runs are deterministic given their seed, so the table is the same. A task on a
worker that dies is rescheduled on another (the scheduler's ``allowed-failures``); a task that
raises is retried (``retries``) and, if it still fails, reported as a failed run. Checkpoints
(``--checkpoints``) are written by the workers, to a shared folder or a URL.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

from emostore.cluster import RETRIES, connect, require_distributed
from emostore.heads.sweep import RunSpec, load_for, run_one
from emostore.store import Location, Store

_cache: dict[str, Any] = {}
_lock = threading.Lock()


def run_task(location: Location, spec: RunSpec) -> dict[str, Any]:
    """The task: one run, on the features this worker already holds when they match."""
    with _lock:  # a worker with several threads trains one run at a time, as a local sweep does
        key = repr((location.url, spec.features, spec.target, spec.speaker_norm, spec.frames, spec.memory_budget))
        if _cache.get("key") != key:
            _cache.clear()
            store = Store.open(location, mode="r")
            _cache.update(key=key, store=store, data=load_for(store, spec))
        return run_one(_cache["store"], _cache["data"], spec)


def run_on_cluster(cluster: Any, store: Store, specs: list[RunSpec], advance: Callable[[], None], *,
                   quiet: bool = False) -> list[dict[str, Any]]:
    """Run ``specs`` on ``cluster``; one outcome per spec (a run, or a failure with its error)."""
    distributed = require_distributed()
    outcomes = []
    with connect(cluster, quiet=quiet) as client:
        batch = uuid.uuid4().hex[:8]
        futures = {client.submit(run_task, store.location, spec, key=f"emostore-sweep-{spec.index}-{batch}",
                                 retries=RETRIES, pure=False): spec for spec in specs}
        try:
            for fut in distributed.as_completed(futures):
                spec = futures[fut]
                try:
                    outcomes.append(fut.result())
                except Exception as exc:  # noqa: BLE001  (one failed run must not stop the others)
                    outcomes.append({"index": spec.index, "failure": {
                        "head": spec.head, "features": spec.features, "setting": spec.setting, "seed": spec.seed,
                        "error": f"{type(exc).__name__}: {exc}"}})
                advance()
        finally:
            client.cancel(list(futures))
    return outcomes
