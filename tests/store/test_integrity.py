"""Damage at rest, on the bundled sample: for each array of a store (table columns, values, mask,
done, error, seq, seq_lengths, index) and each damage (chunk file deleted, truncated to 0 bytes,
random bytes, bad ``zarr.json``), ``verify`` finds it and every command either refuses in one
line with a non-zero exit or repairs it; after ``verify --repair`` the same extract gives values
equal to the undamaged store."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import optional, sample_with_audio_csv
from typer.testing import CliRunner

from emostore.cli import app
from emostore.ingest.run import ingest
from emostore.store import Store

runner = CliRunner()
CHUNK = 32
TEXT = "text/minilm"
LLD = "audio/egemaps-lld"
#: The commands that made the pristine store's feature sets (rerun after a repair).
EXTRACT = {TEXT: ["extract", "text", "{s}", "--device", "cpu", "--chunk-rows", str(CHUNK), "--quiet"],
           LLD: ["extract", "audio", "{s}", "--feature-set", "egemaps-lld", "--chunk-rows", str(CHUNK), "--quiet"]}
DAMAGES = ("deleted", "truncated", "random", "bad-json")


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def one_line_failure(r, *needles: str) -> str:
    assert r.exit_code != 0, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output, r.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """The sample with speech: text/minilm and egemaps-lld frames in 32-row chunks, and an index."""
    optional("opensmile", "audio")
    optional("faiss", "search")
    root = tmp_path_factory.mktemp("integrity")
    store, _ = ingest("csv", [sample_with_audio_csv(root)], root / "store", dataset="sample")
    for cmd in EXTRACT.values():
        r = run(*[a.format(s=store.path) for a in cmd])
        assert r.exit_code == 0, r.output
    assert run("index", "build", store.path, "--features", TEXT, "--name", "text", "--quiet").exit_code == 0
    return store.path


def speech_chunk(store: Path) -> int:
    """A chunk of the frame feature set with frames in it."""
    fs = Store.open(store, mode="r").feature_set(LLD)
    return int(np.flatnonzero(fs.mask())[0]) // CHUNK


def target(store: Path, array: str) -> tuple[Path, Path]:
    """(a chunk file, the array's zarr.json) of ``array`` in ``store``."""
    if array == "table":  # a column that training reads too (it reads only the columns it needs)
        a = store / "table" / "emotion"
        return a / "c" / "0", a / "zarr.json"
    if array == "index":
        group = store / "indexes" / "text"
        version = json.loads((group / "zarr.json").read_text())["attributes"]["current"]
        a = group / version / "faiss"
        return a / "c" / "0", a / "zarr.json"
    if array in ("seq", "seq_lengths", "error"):  # a chunk of the frame feature set with valid and failed rows
        c = speech_chunk(store)
        a = store / "features" / LLD / array
        if array == "seq":
            a = a / str(c)
            return a / "c" / "0" / "0", a / "zarr.json"
        return a / "c" / str(c), a / "zarr.json"
    a = store / "features" / TEXT / array
    return (a / "c" / "5" / "0" if array == "values" else a / "c" / "5"), a / "zarr.json"


def damage(path: Path, meta: Path, how: str) -> None:
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(b"")
    elif how == "random":
        data = bytearray(path.read_bytes())
        rng = np.random.default_rng(0)
        for i in rng.choice(len(data), size=min(16, len(data)), replace=False):
            data[i] ^= 0x5A
        path.write_bytes(bytes(data))
    else:
        meta.write_text(meta.read_text()[:-7] + "{{ not json")


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def assert_equal_stores(a: Path, b: Path, name: str) -> None:
    fa, fb = Store.open(a, mode="r").feature_set(name), Store.open(b, mode="r").feature_set(name)
    assert fb.is_complete()
    for x, y in zip(fa.read(), fb.read()):
        np.testing.assert_array_equal(x, y)
    if fa.seq_dim:
        for x, y in zip(fa.read_sequences(), fb.read_sequences()):
            np.testing.assert_array_equal(x, y)


FEATURE_ARRAYS = ("values", "mask", "done", "error", "seq", "seq_lengths")


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("array", FEATURE_ARRAYS)
def test_feature_set_damage_is_found_refused_and_repaired(pristine, tmp_path, array, how):
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    name = LLD if array in ("seq", "seq_lengths", "error") else TEXT
    damage(*target(store, array), how)
    r = run("verify", store, "--json")
    if (array, how) == ("done", "deleted"):  # a chunk without done is pending: not damage, unfinished work
        assert r.exit_code == 0 and any(f"{name}: {CHUNK} of 385 rows are pending" in n
                                        for n in json.loads(r.stdout)["notes"]), r.output
    else:
        assert r.exit_code == 1, r.output
        found = json.loads(r.stdout)["damage"]
        assert found and all(d["name"] == name for d in found) and not any(d["repaired"] for d in found), found
    # a read refuses in one line, naming the feature set (and what to run)
    head = "sequence" if array.startswith("seq") else "mlp"  # a head that reads the damaged part
    r = run("train", store, "--features", name, "--head", head, "--out", tmp_path / "ckpt", "--epochs", "1",
            "--device", "cpu", "--quiet")
    one_line_failure(r, name)
    # extract either refuses in one line, or finds the damaged chunk and computes it again
    cmd = [a.format(s=store) for a in EXTRACT[name]]
    r = run(*cmd)
    if r.exit_code != 0:
        one_line_failure(r, "emostore verify")
        r = run("verify", store, "--repair")
        assert r.exit_code == 0 and "repaired" in r.stdout, r.output
        r = run(*cmd)
        assert r.exit_code == 0, r.output
    assert run("verify", store).exit_code == 0
    assert_equal_stores(pristine, store, name)


@pytest.mark.parametrize("how", DAMAGES)
def test_table_damage_is_found_and_never_changed(pristine, tmp_path, how):
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    damage(*target(store, "table"), how)
    before = digest(store)
    r = run("verify", store, "--repair")
    assert r.exit_code == 1 and "cannot be repaired" in r.stdout and "ingest the corpus again" in r.stdout, r.output
    assert digest(store) == before  # nothing changed
    one_line_failure(run("train", store, "--features", TEXT, "--out", tmp_path / "c", "--device", "cpu", "--quiet"),
                     "utterance table", "ingest")
    one_line_failure(run(*[a.format(s=store) for a in EXTRACT[TEXT]]), "ingest")


@pytest.mark.parametrize("how", DAMAGES)
def test_index_damage_is_found_refused_and_rebuilt(pristine, tmp_path, how):
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    damage(*target(store, "index"), how)
    one_line_failure(run("search", store, "I told you so", "--index", "text"), "index")
    r = run("verify", store, "--repair", "--json")
    assert r.exit_code == 0, r.output
    assert [(d["part"], d["repaired"]) for d in json.loads(r.stdout)["damage"]] == [("index", True)]
    assert run("index", "build", store, "--features", TEXT, "--name", "text", "--quiet").exit_code == 0
    r = run("search", store, "I told you so", "--index", "text", "--json")
    assert r.exit_code == 0 and len(json.loads(r.stdout)["neighbours"]) == 10, r.output


def test_an_undamaged_store_verifies_and_missing_differs_from_fill(pristine, tmp_path):
    """All chunks are stored, even those holding only the fill value (a chunk of failed rows: its
    values all NaN, mask all False): so deleting one is found, not taken for fill values."""
    r = run("verify", pristine, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["ok"] and report["checked"]["feature sets"] == [LLD, TEXT]
    assert report["checked"]["indexes"] == ["text"]
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    fs = Store.open(store, mode="r").feature_set(LLD)
    silent = next(c for c in range(fs.n_chunks) if not fs.mask()[fs.chunk_slice(c)].any())
    values = store / "features" / LLD / "values" / "c" / str(silent) / "0"
    assert values.is_file()  # a chunk of NaN only is written all the same
    values.unlink()
    r = run("verify", store, "--json")
    assert r.exit_code == 1
    assert [d["chunk"] for d in json.loads(r.stdout)["damage"]] == [silent]


def test_every_reader_refuses_a_damaged_chunk_in_one_line(pristine, tmp_path):
    """evaluate, sweep, index build, search (its query's own feature set) and info: one line, non-zero."""
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    ckpt = tmp_path / "ckpt"
    assert run("train", store, "--features", TEXT, "--out", ckpt, "--epochs", "2", "--device", "cpu",
               "--quiet").exit_code == 0
    damage(*target(store, "values"), "random")
    one_line_failure(run("evaluate", ckpt, "--store", store), TEXT, "chunk 5", "verify")
    one_line_failure(run("sweep", store, "--heads", "mlp", "--features", TEXT, "--seeds", "1", "--epochs", "1",
                         "--quiet"), TEXT, "chunk 5")
    one_line_failure(run("index", "build", store, "--features", TEXT, "--name", "again", "--quiet"), TEXT, "chunk 5")
    one_line_failure(run("search", store, "meld-never-an-id", "--index", "text", "--id"), "utterance")
    (store / "features" / TEXT / "mask" / "c" / "3").unlink()
    r = run("info", store, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["features"][TEXT]["chunks_missing"] == [3], r.output
