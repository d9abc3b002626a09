"""Stores at URLs (a real S3 endpoint on loopback), feature-set creation without locks, plain Zarr."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import zarr
from test_feature_set import small_table

from emostore.errors import UserError
from emostore.store import ConfigMismatch, Store, StoreNotFound
from emostore.store.location import Location

CREATE = """
import json, sys
from emostore.store import Store
from emostore.store.store import ConfigMismatch
url, model = sys.argv[1], sys.argv[2]
store = Store.open(url)
print("ready", flush=True)
sys.stdin.readline()  # all clients are released at the same instant
try:
    fs = store.create_feature_set("text/same", dim=4, config={"model": model}, encoder="toy", version={},
                                  chunk_rows=4)
    fs.write_chunk(0, [[float(len(model))] * 4] * 4, [True] * 4, [""] * 4)
    print(json.dumps({"ok": True, "model": model}))
except ConfigMismatch as exc:
    print(json.dumps({"ok": False, "error": str(exc)}))
"""


def clients_at_once(url: str, models: list[str]) -> list[dict]:
    """Several processes creating feature set ``text/same`` at the same instant."""
    procs = [subprocess.Popen([sys.executable, "-c", CREATE, url, m], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for m in models]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    server = request.getfixturevalue("s3_server")
    return server.bucket(f"b{time.time_ns()}") + "/corpus/store"


def test_round_trip_at_a_url(where):
    with pytest.raises(StoreNotFound):
        Store.open(where)
    if where.startswith("s3://"):
        with pytest.raises(UserError, match="does not exist"):
            Store.create("s3://no-such-bucket/store", small_table(), dataset="toy")
    store = Store.create(where, small_table(), dataset="toy")
    fs = store.create_feature_set("text/toy", dim=3, config={"a": 1}, encoder="toy", version={}, chunk_rows=4)
    fs.write_chunk(1, np.ones((4, 3)), [True, True, False, True], ["", "", "no text", ""])
    back = Store.open(where, mode="r")
    assert back.url == where and back.table["id"].tolist() == [f"u{i}" for i in range(10)]
    _, X, mask = back.read("text/toy")
    assert mask.tolist() == [False] * 4 + [True, True, False, True] + [False] * 2
    assert np.isnan(X[:4]).all() and X[4].tolist() == [1, 1, 1]
    assert back.feature_set("text/toy").errors() == [(6, "u6", "no text")]
    assert back.feature_set("text/toy").pending_chunks() == [0, 2]
    with pytest.raises(UserError, match="already exists"):
        Store.create(where, small_table(), dataset="toy")
    Store.create(where, small_table(3), dataset="toy", overwrite=True)
    assert len(Store.open(where)) == 3 and Store.open(where).feature_sets() == []


def test_two_clients_create_the_same_feature_set_at_once(where):
    Store.create(where, small_table(8), dataset="toy")
    results = clients_at_once(where, ["alpha", "beta"])  # different configurations
    winners = [r for r in results if r["ok"]]
    losers = [r for r in results if not r["ok"]]
    assert len(winners) == 1 and len(losers) == 1, results
    assert "exists with another configuration" in losers[0]["error"] and "--overwrite" in losers[0]["error"]
    fs = Store.open(where).feature_set("text/same")
    assert fs.config == {"model": winners[0]["model"]}
    assert fs.read()[1][0, 0] == len(winners[0]["model"])
    # the same configuration from several clients at once (shards): all join the one feature set
    Store.create(where, small_table(8), dataset="toy", overwrite=True)
    results = clients_at_once(where, ["gamma"] * 3)
    assert all(r["ok"] for r in results), results
    fs = Store.open(where).feature_set("text/same")
    assert fs.config == {"model": "gamma"} and fs.done()[:4].all() and not fs.done()[4:].any()


def test_creation_cut_short_is_completed_by_the_next_writer(where):
    store = Store.create(where, small_table(), dataset="toy")
    fs = store.create_feature_set("text/toy", dim=2, config={"m": 1}, encoder="toy", version={}, chunk_rows=4)
    fs.write_chunk(0, np.ones((4, 2)), [True] * 4, [""] * 4)
    loc = Location.parse(where)
    for array in ("done", "error"):  # as if the creator had died after writing the metadata
        loc.fs.rm(loc.key(f"features/text/toy/{array}"), recursive=True)
    with pytest.raises(ConfigMismatch):
        Store.open(where).create_feature_set("text/toy", dim=2, config={"m": 2}, encoder="toy", version={})
    again = Store.open(where).create_feature_set("text/toy", dim=2, config={"m": 1}, encoder="toy", version={})
    assert again.chunk_rows == 4 and again.pending_chunks() == [0, 1, 2]  # done was lost with the array
    assert np.asarray(again.group["mask"][:4]).all()  # values and mask survived on disk...
    assert not again.read()[2][:4].any()  # ...but a chunk counts only once done: pending until extracted again


def test_url_forms_and_errors(tmp_path):
    store = Store.create(f"file://{tmp_path / 's'}", small_table(), dataset="toy")
    assert store.path == tmp_path / "s" and Store.open(tmp_path / "s").dataset == "toy"
    with pytest.raises(UserError, match="nosuchproto"):
        Store.open("nosuchproto://bucket/store")
    with pytest.raises(UserError, match="object storage"):
        Store(Location.parse("s3://b/p"), None).path  # type: ignore[arg-type]  # noqa: B018


def test_plain_zarr_reads_the_whole_store_without_warnings(sample_store, tmp_path):
    """Every file in a store is a Zarr node: no lock file, no stray index files."""
    import shutil

    from emostore.search.run import build_index

    shutil.copytree(sample_store.path, tmp_path / "s")
    store = Store.open(tmp_path / "s")
    fs = store.create_feature_set("audio/frames", dim=2, config={}, encoder="toy", version={}, seq_dim=3)
    fs.write_chunk(0, np.ones((fs.chunk_slice(0).stop, 2)), [True] * fs.chunk_slice(0).stop,
                   [""] * fs.chunk_slice(0).stop, [np.ones((2, 3))] * fs.chunk_slice(0).stop)
    build_index(store, ["text/minilm"])
    build_index(store, ["text/minilm"], kind="hnsw", shards=2, name="sharded")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        root = zarr.open_group(str(tmp_path / "s"), mode="r")
        members = dict(root.members(max_depth=None))
        root.tree()
    assert {"table/id", "features/text/minilm/done", "features/audio/frames/seq/0"} <= set(members)
    assert any(k.startswith("indexes/sharded/") and k.endswith("faiss-1") for k in members)
    assert not list((tmp_path / "s").glob("**/.emostore*"))


@pytest.mark.slow
def test_an_object_store_that_goes_away_is_one_line_and_a_rerun_resumes(s3_server, tmp_path):
    """The endpoint stops answering during a single-process extraction: after the storage
    client's retries with backoff, one line says which endpoint failed and that a rerun resumes;
    with the endpoint back, the rerun completes."""
    from conftest import SAMPLE

    from emostore.ingest.run import ingest

    url = s3_server.bucket("gone") + "/store"
    ingest("csv", [SAMPLE], url, dataset="sample")
    cmd = [sys.executable, "-m", "emostore.cli", "extract", "text", url, "--device", "cpu", "--chunk-rows", "32",
           "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    s3_server.stop()
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        s3_server.start()
    lines = err.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, err[-2000:]
    assert "cannot reach the storage" in lines[0] and s3_server.endpoint in lines[0] and "resumes" in lines[0]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    assert Store.open(url, mode="r").feature_set("text/minilm").is_complete()


def test_verify_finds_and_repairs_damage_on_object_storage(s3_server, minilm_encoder):
    """A chunk of values deleted and one corrupted on S3: verify lists both and exits 1; --repair
    marks them pending; extract recomputes them, equal to before."""
    import fsspec
    from conftest import SAMPLE
    from typer.testing import CliRunner

    from emostore.cli import app
    from emostore.extract.runner import run_extraction
    from emostore.ingest.run import ingest

    url = s3_server.bucket("verify") + "/store"
    ingest("csv", [SAMPLE], url, dataset="sample")
    run_extraction(Store.open(url), minilm_encoder, chunk_rows=64, progress=False)
    before = Store.open(url, mode="r").read("text/minilm")[1]
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    base = url.removeprefix("s3://") + "/features/text/minilm/values/c"
    fs.rm(f"{base}/1/0")
    data = bytearray(fs.cat_file(f"{base}/3/0"))
    data[10] ^= 0xFF
    fs.pipe_file(f"{base}/3/0", bytes(data))
    runner = CliRunner()
    r = runner.invoke(app, ["verify", url, "--json"])
    assert r.exit_code == 1, r.output
    assert sorted(d["chunk"] for d in json.loads(r.stdout)["damage"]) == [1, 3]
    assert runner.invoke(app, ["verify", url, "--repair"]).exit_code == 0
    report = run_extraction(Store.open(url), minilm_encoder, chunk_rows=64, progress=False)
    assert report.chunks_run == 2 and report.complete
    np.testing.assert_array_equal(Store.open(url, mode="r").read("text/minilm")[1], before)
    assert runner.invoke(app, ["verify", url]).exit_code == 0
