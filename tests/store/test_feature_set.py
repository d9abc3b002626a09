"""The store: table round trip, feature-set writes, masks, config refusal, shards, plain Zarr."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import zarr

from emostore.errors import UserError
from emostore.ingest.base import finalize
from emostore.store import ConfigMismatch, Shard, Store


def small_table(n: int = 10) -> pd.DataFrame:
    raw = pd.DataFrame({
        "id": [f"u{i}" for i in range(n)],
        "dialogue": [f"d{i // 4}" for i in range(n)],
        "turn": [i % 4 for i in range(n)],
        "speaker": ["AB"[i % 2] for i in range(n)],
        "text": [f"utterance number {i} — café" if i != 3 else None for i in range(n)],
        "emotion": [["joy", "anger", None, "neutral", "joy"][i % 5] for i in range(n)],
        "split": ["train"] * (n - 2) + ["dev", "test"],
        "start": [float(i) for i in range(n)],
        "end": [i + 0.5 for i in range(n)],
        "season": [1.0] * n,
    })
    return finalize(raw, "toy", [], "toy")


def test_table_round_trip(tmp_path):
    table = small_table()
    store = Store.create(tmp_path / "s", table, dataset="toy")
    back = Store.open(tmp_path / "s").table
    assert list(back.columns) == list(table.columns)
    assert back["text"].iloc[0] == "utterance number 0 — café"
    assert back["text"].iloc[3] is None and back["emotion"].iloc[2] is None
    assert back["turn"].tolist() == table["turn"].tolist()
    assert np.isnan(back["sentiment_score"]).all()
    assert back["start"].tolist() == table["start"].tolist()
    assert back["season"].tolist() == [1.0] * 10
    assert len(store) == 10


def test_create_refuses_existing_unless_overwrite(tmp_path):
    Store.create(tmp_path / "s", small_table(), dataset="toy")
    with pytest.raises(UserError, match="already exists"):
        Store.create(tmp_path / "s", small_table(), dataset="toy")
    Store.create(tmp_path / "s", small_table(5), dataset="toy", overwrite=True)
    assert len(Store.open(tmp_path / "s")) == 5
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an emostore store"):
        Store.create(tmp_path / "other", small_table(), dataset="toy", overwrite=True)
    assert (tmp_path / "other" / "precious.txt").exists()


def test_write_read_masks_and_errors(tmp_path):
    store = Store.create(tmp_path / "s", small_table(), dataset="toy")
    fs = store.create_feature_set("text/toy", dim=3, config={"a": 1}, encoder="toy", version={}, chunk_rows=4)
    assert fs.n_chunks == 3 and fs.pending_chunks() == [0, 1, 2]
    ids, X, mask = fs.read()
    assert np.isnan(X).all() and not mask.any()  # nothing written: missing, never zeros
    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    fs.write_chunk(0, values, [True, True, True, False], ["", "", "", "no text"])
    ids, X, mask = fs.read()
    assert ids[:4].tolist() == ["u0", "u1", "u2", "u3"]
    assert mask.tolist() == [True, True, True] + [False] * 7
    np.testing.assert_array_equal(X[:3], values[:3])
    assert np.isnan(X[3]).all()
    assert fs.errors() == [(3, "u3", "no text")]
    assert fs.pending_chunks() == [1, 2]
    # the last chunk is short (10 rows, chunks of 4)
    fs.write_chunk(2, np.ones((2, 3)), [True, True], ["", ""])
    assert fs.pending_chunks() == [1]
    _, Xs, ms = fs.read(np.array([8, 9, 0]))
    assert ms.tolist() == [True, True, True] and Xs[0].tolist() == [1, 1, 1]
    ids, Xd, md = store.read("text/toy", split="dev")
    assert ids.tolist() == ["u8"] and md.tolist() == [True]


def test_config_mismatch_refused_and_overwrite(tmp_path):
    store = Store.create(tmp_path / "s", small_table(), dataset="toy")
    fs = store.create_feature_set("text/toy", dim=3, config={"model": "a"}, encoder="toy", version={})
    fs.write_chunk(0, np.zeros((10, 3)), [True] * 10, [""] * 10)
    same = store.create_feature_set("text/toy", dim=3, config={"model": "a"}, encoder="toy", version={})
    assert same.is_complete()  # same configuration: reopened, nothing lost
    with pytest.raises(ConfigMismatch, match="--overwrite"):
        store.create_feature_set("text/toy", dim=3, config={"model": "b"}, encoder="toy", version={})
    new = store.create_feature_set("text/toy", dim=3, config={"model": "b"}, encoder="toy", version={},
                                   overwrite=True)
    assert not new.done().any() and new.config == {"model": "b"}


def test_config_hash_is_stable():
    from emostore.store import config_hash

    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_shards_own_disjoint_chunks():
    shards = [Shard(i, 3) for i in range(3)]
    owners = [[s.owns(c) for s in shards] for c in range(10)]
    assert all(sum(o) == 1 for o in owners)
    assert Shard.parse("1/4") == Shard(1, 4)
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(UserError):
            Shard.parse(bad)


def test_plain_zarr_can_read_the_store(tmp_path):
    store = Store.create(tmp_path / "s", small_table(), dataset="toy")
    fs = store.create_feature_set("text/toy", dim=2, config={}, encoder="toy", version={"x": "1"})
    fs.write_chunk(0, np.ones((10, 2)), [True] * 10, [""] * 10)
    root = zarr.open_group(str(tmp_path / "s"), mode="r")
    assert root.attrs["dataset"] == "toy"
    assert root["table/id"][:].tolist()[:2] == ["u0", "u1"]
    g = root["features/text/toy"]
    assert g["values"].shape == (10, 2) and g["mask"][:].all() and g.attrs["dim"] == 2
    assert g.attrs["config_hash"] and g.attrs["created"]


def test_info_counts(tmp_path):
    store = Store.create(tmp_path / "s", small_table(), dataset="toy")
    store.create_feature_set("text/toy", dim=2, config={}, encoder="toy", version={})
    info = store.info()
    assert info["utterances"] == 10
    assert info["splits"] == {"train": 8, "dev": 1, "test": 1}
    assert info["labels"] == {"joy": 4, "anger": 2, "neutral": 2}
    f = info["features"]["text/toy"]
    assert f["dim"] == 2 and f["rows_done"] == 0 and not f["complete"] and f["config_hash"]


def test_info_counts_agree_with_the_arrays_with_and_without_checksums(tmp_path):
    """``counts`` (info) equals what the arrays hold, and names a finished chunk whose file is gone;
    a complete feature set written before checksums is counted from its chunk listing alone."""
    store = Store.create(tmp_path / "s", small_table(), dataset="toy")
    fs = store.create_feature_set("text/toy", dim=3, config={"a": 1}, encoder="toy", version={}, chunk_rows=4)
    fs.write_chunk(0, np.ones((4, 3)), np.ones(4, bool), [""] * 4)
    assert fs.counts() == (4, 4, 0, [])
    fs.write_chunk(1, np.ones((4, 3)), np.array([1, 0, 1, 1], bool), ["", "bad", "", ""])
    fs.write_chunk(2, np.ones((2, 3)), np.ones(2, bool), ["", ""])
    assert fs.counts() == (10, 9, 1, []) and fs.summary()["complete"]
    (tmp_path / "s" / "features" / "text" / "toy" / "mask" / "c" / "1").unlink()
    assert fs.counts()[3] == [1]
    old = store.create_feature_set("text/old", dim=3, config={"a": 1}, encoder="toy", version={}, chunk_rows=4)
    del old.group.attrs["integrity"]
    for key, fill in (("values", np.nan), ("mask", False), ("error", ""), ("done", False)):  # as written before
        arr = old.group[key]
        zarr.open_group(old.group.store, path=old.path).create_array(
            key, shape=arr.shape, chunks=arr.chunks, dtype=arr.dtype, fill_value=fill, overwrite=True)
    old.group["values"][:] = np.ones((10, 3), np.float32)
    old.group["mask"][:] = True
    old.group["done"][:] = True
    assert old.counts() == (10, 10, 0, []) and old.errors() == []
    old.group["mask"][5] = False
    old.group["error"][5] = "bad"
    assert old.counts() == (10, 9, 1, []) and [e[1:] for e in old.errors()] == [("u5", "bad")]


@pytest.mark.parametrize("zarrs_installed", [True, False])
def test_flags_read_by_zarrs_or_zarr_agree_and_a_bad_chunk_is_named(tmp_path, monkeypatch, zarrs_installed):
    """``done`` and ``mask`` read whole through zarrs' pipeline (or zarr's, without zarrs) equal the
    arrays, chunk by chunk; a flag chunk whose bytes changed still stops the read in one line."""
    from emostore.store import arrays
    from emostore.store.feature_set import StoreDamaged

    if not zarrs_installed:
        monkeypatch.setitem(sys.modules, "zarrs", None)  # `import zarrs` raises ImportError
    store = Store.create(tmp_path / "s", small_table(), dataset="toy")
    fs = store.create_feature_set("text/toy", dim=3, config={}, encoder="toy", version={}, chunk_rows=4)
    fs.write_chunk(0, np.ones((4, 3)), np.array([1, 0, 1, 1], bool), ["", "bad", "", ""])
    fs.write_chunk(2, np.ones((2, 3)), np.array([0, 1], bool), ["bad", ""])
    fast = arrays.read_whole(fs.group, "mask")
    assert (fast is not None) == zarrs_installed
    by_chunk = np.concatenate([np.asarray(fs.group["mask"][fs.chunk_slice(c)]) for c in range(fs.n_chunks)])
    assert fs.mask().tolist() == (by_chunk & fs.done()).tolist() == [1, 0, 1, 1, 0, 0, 0, 0, 0, 1]
    assert fs.done().tolist() == [True] * 4 + [False] * 4 + [True] * 2
    chunk = tmp_path / "s" / "features" / "text" / "toy" / "done" / "c" / "2"
    data = bytearray(chunk.read_bytes())
    data[0] ^= 0xFF  # the checksum no longer matches
    chunk.write_bytes(bytes(data))
    assert arrays.read_whole(fs.group, "done") is None
    with pytest.raises(StoreDamaged, match=r"chunk 2 \(rows 8-9\).*'done' chunk cannot be read.*verify"):
        fs.done()
