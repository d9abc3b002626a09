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
