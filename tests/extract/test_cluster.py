"""Extraction on a real Dask cluster (a LocalCluster of 2 worker processes) on the sample: the same
bits as one process, a worker killed with SIGKILL mid-task, a client interrupted or killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE, optional, sample_with_audio_csv

from emostore.extract.runner import run_extraction
from emostore.ingest.run import ingest
from emostore.store import Store

distributed = optional("distributed", "cluster")
pytestmark = pytest.mark.slow
CHUNK = 24  # 385 sample rows: 17 tasks


@pytest.fixture(scope="module")
def client(dask_client):
    return dask_client


def make_store(tmp: Path, name: str, csv: Path = SAMPLE) -> Store:
    store, _ = ingest("csv", [csv], tmp / name, dataset="sample")
    return store


@pytest.fixture(scope="module")
def ref(tmp_path_factory, minilm_encoder) -> Store:
    """The single-process run, same chunking and batching."""
    store = make_store(tmp_path_factory.mktemp("ref"), "reference")
    run_extraction(store, minilm_encoder, chunk_rows=CHUNK, progress=False)
    return store


def assert_same(a: Store, b: Store, name: str = "text/minilm") -> None:
    fa, fb = a.feature_set(name), b.feature_set(name)
    assert fb.is_complete() and fa.config_hash == fb.config_hash
    for x, y in zip(fa.read(), fb.read()):
        np.testing.assert_array_equal(x, y)  # bit for bit (NaN where failed, in both)
    assert fa.errors() == fb.errors()
    if fa.seq_dim:
        for x, y in zip(fa.read_sequences(), fb.read_sequences()):
            np.testing.assert_array_equal(x, y)


def done_rows(store: Store, name: str = "text/minilm") -> int:
    return int(store.feature_set(name).done().sum()) if store.has_feature_set(name) else 0


def test_text_on_cluster_equals_single_process(tmp_path, client, ref, minilm_encoder):
    store = make_store(tmp_path, "cluster")
    report = run_extraction(store, minilm_encoder, chunk_rows=CHUNK, progress=False, cluster=client)
    assert report.complete and report.chunks_run == 17 and report.rows_run == 385 and not report.chunk_errors
    assert 1 <= report.encoder_loads <= 2  # one encoder per worker, not one per task
    assert_same(ref, Store.open(store.path))
    # a rerun finds nothing pending and never contacts the cluster
    again = run_extraction(store, minilm_encoder, chunk_rows=CHUNK, progress=False, cluster="tcp://127.0.0.1:1")
    assert again.complete and again.chunks_run == 0


def test_audio_on_cluster_equals_single_process(tmp_path, client):
    optional("opensmile", "audio")
    from emostore.extract.base import build_encoder

    csv = sample_with_audio_csv(tmp_path)
    one, many = make_store(tmp_path, "one", csv), make_store(tmp_path, "many", csv)
    enc = build_encoder("audio", "opensmile", {"feature_set": "egemaps-lld"})  # 50-d, plus ragged 25-d frames
    run_extraction(one, enc, chunk_rows=48, progress=False)
    report = run_extraction(many, enc, chunk_rows=48, progress=False, cluster=client)
    assert report.complete and report.chunks_run == 9 and not report.chunk_errors
    fs = one.feature_set("audio/egemaps-lld")
    assert int(fs.mask().sum()) == 42 and report.rows_failed == 385 - 42  # rows without audio stay masked
    assert_same(one, many, "audio/egemaps-lld")


def test_worker_killed_mid_task_run_completes(tmp_path, client, ref, minilm_encoder):
    store = make_store(tmp_path, "victim")
    out: dict = {}

    def run() -> None:
        out["report"] = run_extraction(store, minilm_encoder, chunk_rows=CHUNK, progress=False, cluster=client)

    thread = threading.Thread(target=run)
    thread.start()
    victim, deadline = None, time.time() + 180
    while victim is None and thread.is_alive() and time.time() < deadline:
        if done_rows(Store.open(store.path)) >= CHUNK:  # encoders loaded and writing
            executing = client.run(lambda dask_worker: [str(ts.key) for ts in dask_worker.state.executing])
            victim = next((w for w, keys in executing.items() if any(k.startswith("emostore-chunk") for k in keys)),
                          None)
        time.sleep(0.02)
    assert victim is not None, "no worker was seen running a chunk"
    pid = client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)
    killed_at = done_rows(Store.open(store.path))
    thread.join(timeout=300)
    assert not thread.is_alive()
    report = out["report"]
    assert killed_at < 385, "killed after the end: nothing was tested"
    assert report.complete and not report.chunk_errors and report.chunks_run == 17
    assert_same(ref, Store.open(store.path))
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker


def cli(store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "emostore.cli", "extract", "text", str(store), "--device", "cpu",
            "--batch-size", "32", "--chunk-rows", str(CHUNK), "--quiet", "--cluster", "local:2", *extra]


def stop_after_rows(store: Path, rows: int, sig: int) -> tuple[int, int, list[int], str]:
    """Run the CLI on its own local cluster; send ``sig`` once ``rows`` rows are done."""
    import psutil

    # SIGINT as a terminal gives it, even where this test itself runs with SIGINT ignored (a background job)
    proc = subprocess.Popen(cli(store), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline, children = time.time() + 240, []
    while proc.poll() is None and time.time() < deadline:
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)] or children
        if done_rows(Store.open(store)) >= rows:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before the signal: {proc.communicate()[1][-2000:]}"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, done_rows(Store.open(store)), children, err


@pytest.fixture(scope="module")
def big_ref(tmp_path_factory, minilm_encoder) -> Store:
    """The sample six times over (2,310 rows, so a run on the cluster lasts long enough to be
    interrupted mid-way), extracted in one process."""
    import pandas as pd

    tmp = tmp_path_factory.mktemp("big")
    table = pd.read_csv(SAMPLE, dtype=str, keep_default_na=False)
    copies = [table.assign(id=table["id"] + f"-r{k}", dialogue=table["dialogue"] + f"-r{k}") for k in range(6)]
    pd.concat(copies).to_csv(tmp / "big.csv", index=False)
    store = make_store(tmp, "reference", tmp / "big.csv")
    run_extraction(store, minilm_encoder, chunk_rows=CHUNK, progress=False)
    return store


def test_client_interrupted_or_killed_then_rerun_completes(tmp_path, client, big_ref, minilm_encoder):
    import psutil

    ref, n = big_ref, len(big_ref)
    store, _ = ingest("csv", [big_ref.path.parent / "big.csv"], tmp_path / "client", dataset="sample")
    code, seen, _, err = stop_after_rows(store.path, CHUNK, signal.SIGINT)  # Ctrl-C
    assert code == 130 and "run the same command again to resume" in err, err
    assert CHUNK <= seen < n
    code, seen2, workers, _ = stop_after_rows(store.path, seen + CHUNK, signal.SIGKILL)
    assert code == -signal.SIGKILL and seen <= seen2 < n, (seen, seen2)
    assert workers, "the client had no worker processes"
    _, alive = psutil.wait_procs([psutil.Process(p) for p in workers if psutil.pid_exists(p)], timeout=60)
    assert not alive, f"worker processes outlived their killed client: {alive}"
    # every chunk marked done holds its data, then a rerun (on another cluster) completes the store
    partial = Store.open(store.path).feature_set("text/minilm")
    done = partial.done()
    np.testing.assert_array_equal(partial.read()[1][done], ref.feature_set("text/minilm").read()[1][done])
    # rows not done hold nothing, except chunks a kill interrupted between their values and `done`
    written = np.flatnonzero(~done & partial.mask())
    assert len(np.unique(written // CHUNK)) <= 2, f"rows not done hold data in many chunks: {written}"
    report = run_extraction(Store.open(store.path), minilm_encoder, chunk_rows=CHUNK, progress=False, cluster=client)
    assert report.complete and report.rows_run == n - int(done.sum())
    assert_same(ref, Store.open(store.path))


def test_cluster_addresses_and_refusals(tmp_path):
    from typer.testing import CliRunner

    from emostore.cli import app
    from emostore.cluster import parse_local
    from emostore.errors import UserError

    assert parse_local("local:3") == 3 and parse_local("tcp://10.0.0.1:8786") is None
    assert parse_local("localhost:8786") is None  # a scheduler on this machine, not a local cluster
    for bad in ("local:", "local:x", "local:0"):
        with pytest.raises(UserError, match="local:N"):
            parse_local(bad)
    store = make_store(tmp_path, "s")
    r = CliRunner().invoke(app, ["extract", "audio", str(store.path), "--workers", "2", "--cluster", "local:2"])
    assert r.exit_code == 1 and "--workers and --cluster do not mix" in r.output


@pytest.mark.parametrize("cpu", ["plain", "bf16"])
def test_the_client_decides_the_precision_for_every_worker(tmp_path, client, monkeypatch, cpu):
    """``--precision auto`` is resolved once, by the process that creates the feature set; Dask
    workers and --workers processes (which read the real CPU flags, not the simulated ones)
    rebuild the encoder from the stored configuration, so every row has the same precision and
    the same bits as one process."""
    from emostore.core import runtime
    from emostore.extract.encoders.text import text_encoder

    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"amx_bf16"} if cpu == "bf16" else {"avx2"}))
    enc = text_encoder("minilm", device="cpu", batch_size=32)
    assert enc.config.precision == ("bfloat16" if cpu == "bf16" else "float32")
    one = make_store(tmp_path, "one")
    run_extraction(one, enc, chunk_rows=CHUNK, progress=False)
    on_cluster = make_store(tmp_path, "cluster")
    run_extraction(on_cluster, enc, chunk_rows=CHUNK, progress=False, cluster=client)
    workers = make_store(tmp_path, "workers")
    run_extraction(workers, enc, chunk_rows=CHUNK, progress=False, workers=2)
    for other in (on_cluster, workers):
        assert Store.open(other.path).feature_set("text/minilm").config["precision"] == enc.config.precision
        assert_same(one, Store.open(other.path))


def test_a_local_cluster_listens_on_this_machine_only():
    """The scheduler and its dashboard bind to 127.0.0.1, not to every interface; --dashboard-address
    moves the dashboard."""
    import psutil

    from emostore.cluster import connect, dashboard_at

    with connect("local:1", quiet=True) as client:
        assert client.dashboard_link.startswith("http://127.0.0.1:")
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        port = int(client.dashboard_link.split(":")[2].split("/")[0])
        listening = [c.laddr for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port]
        assert listening and all(a.ip == "127.0.0.1" for a in listening), listening
    with dashboard_at("127.0.0.1:0"), connect("local:1", quiet=True) as client:
        assert client.dashboard_link.startswith("http://127.0.0.1:") and ":8787" not in client.dashboard_link
