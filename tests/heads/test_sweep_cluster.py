"""``sweep --cluster`` on a real Dask cluster (a LocalCluster of 2 worker processes) over the sample:
the same table as a local sweep with the same seeds, checkpoints written by the workers, and a
worker killed with SIGKILL in the middle of a run, whose task is run again elsewhere."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from emostore.heads.sweep import sweep
from emostore.heads.train import TrainConfig

distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed (emostore[cluster])")
pytestmark = pytest.mark.slow
CONFIG = TrainConfig(epochs=12, patience=12, device="cpu")


@pytest.fixture(scope="module")
def client(dask_client):
    return dask_client


def table(result) -> list[tuple]:
    """What a sweep found, without its times."""
    return [(r["head"], r["features"], r["setting"], r["seed"], r["metrics"], r["dev_score"], r["best_epoch"])
            for r in result.runs]


def test_cluster_sweep_equals_local_sweep_and_survives_a_killed_worker(sample_store, client, tmp_path):
    grid = {"mlp.hidden": ["32", "64"], "knn.k": ["5"]}
    args = dict(seeds=2, grid=grid, config=CONFIG, progress=False)
    local = sweep(sample_store, ["mlp", "context", "logreg"], [["text/minilm"]], **args)
    assert len(local.runs) == 8 and not local.failures  # mlp x 2 hidden x 2 seeds, context and logreg x 2 seeds

    out: dict = {}
    folder = tmp_path / "checkpoints"

    def run() -> None:
        out["result"] = sweep(sample_store, ["mlp", "context", "logreg"], [["text/minilm"]], cluster=client,
                              checkpoints=str(folder), **args)

    thread = threading.Thread(target=run)
    thread.start()
    victim, deadline = None, time.time() + 180
    while victim is None and thread.is_alive() and time.time() < deadline:
        executing = client.run(lambda dask_worker: [str(ts.key) for ts in dask_worker.state.executing])
        victim = next((w for w, keys in executing.items() if any(k.startswith("emostore-sweep") for k in keys)),
                      None)
        time.sleep(0.05)
    assert victim is not None, "no worker was seen running a sweep task"
    os.kill(client.run(os.getpid, workers=[victim])[victim], signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive()
    remote = out["result"]
    assert not remote.failures and table(remote) == table(local)  # every run, the same numbers, in order
    written = sorted(p.name for p in folder.iterdir())
    assert len(written) == 8 and "mlp_text-minilm_mlp.hidden=32_seed0" in written
    meta = json.loads((folder / "logreg_text-minilm_seed1" / "checkpoint.json").read_text())
    assert meta["head"] == "logreg" and meta["training"]["config"]["seed"] == 1
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker
