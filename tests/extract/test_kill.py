"""Real processes: ``kill -9`` mid-extraction then rerun, and two shards writing at once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import SAMPLE

from emostore.extract.runner import run_extraction
from emostore.ingest.run import ingest
from emostore.store import Store

pytestmark = pytest.mark.slow
CHUNK = 16
BATCH = 32


def make_store(tmp: Path, name: str) -> Store:
    store, _ = ingest("csv", [SAMPLE], tmp / name, dataset="sample")
    return store


def extract_cmd(store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "emostore.cli", "extract", "text", str(store), "--device", "cpu",
            "--batch-size", str(BATCH), "--chunk-rows", str(CHUNK), "--quiet", *extra]


def done_count(store: Path) -> int:
    path = store / "features" / "text" / "minilm" / "done"
    if not (path / "zarr.json").exists():  # the feature set is not created yet
        return 0
    return int(zarr.open_array(str(path), mode="r")[:].sum())


@pytest.fixture(scope="module")
def ref(tmp_path_factory, minilm_encoder) -> Store:
    """The uninterrupted run, in this process, with the same chunking and batching."""
    store = make_store(tmp_path_factory.mktemp("ref"), "reference")
    run_extraction(store, minilm_encoder, chunk_rows=CHUNK, progress=False)
    return store


def assert_same(a: Store, b: Store) -> None:
    for x, y in zip(a.read("text/minilm"), b.read("text/minilm")):
        np.testing.assert_array_equal(x, y)
    fa, fb = a.feature_set("text/minilm"), b.feature_set("text/minilm")
    assert fb.is_complete() and fa.config_hash == fb.config_hash
    np.testing.assert_array_equal(fa.done(), fb.done())


def test_kill_9_at_any_moment_then_rerun(tmp_path, ref):
    n_rows = len(ref)
    victim = make_store(tmp_path, "victim")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # kill while the model loads, then after 1, several and most chunks were written
    targets = [None, CHUNK, n_rows // 3, (2 * n_rows) // 3]
    seen = []
    for target in targets:
        proc = subprocess.Popen(extract_cmd(victim.path), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.time() + 120
        if target is None:
            time.sleep(1.0)
        else:
            while done_count(victim.path) < target and proc.poll() is None and time.time() < deadline:
                time.sleep(0.005)
        assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        seen.append(done_count(victim.path))
        if target is not None:  # the kill came after at least this much work was written
            assert seen[-1] >= target, f"killed at {seen[-1]} rows done, before reaching {target}"
    assert seen[-1] < n_rows, f"killed too late to test anything: {seen}"
    assert seen == sorted(seen), "a kill lost rows that were already written"
    # every chunk marked done holds its data
    partial = Store.open(victim.path)
    fs = partial.feature_set("text/minilm")
    done = fs.done()
    _, X, mask = fs.read()
    _, Xr, _ = ref.read("text/minilm")
    np.testing.assert_array_equal(X[done], Xr[done])
    # rows not done hold nothing, except the chunk the kill interrupted between its values and `done`
    written = np.flatnonzero(~done & (~np.isnan(X).all(axis=1) | mask))
    assert len(np.unique(written // CHUNK)) <= 1, f"rows not done hold data in several chunks: {written}"
    finish = subprocess.run(extract_cmd(victim.path), capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr
    assert_same(ref, Store.open(victim.path))


def test_two_shards_at_once(tmp_path, ref):
    target = make_store(tmp_path, "sharded")
    procs = [subprocess.Popen(extract_cmd(target.path, "--shard", f"{i}/2"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    merged = Store.open(target.path)
    assert_same(ref, merged)
    # each shard ran its own chunks: together all rows, once (a shard that finished first says "incomplete")
    runs = [re.search(r"(\d+) rows in (\d+) chunks", o) for o, _ in outs]
    assert all(runs) and all(int(m.group(2)) > 0 for m in runs), outs
    assert sum(int(m.group(1)) for m in runs) == len(ref), outs
