"""The shared extraction loop: frame sequences stored ragged, worker processes, failures."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from emostore.extract.base import Encoded, Encoder, EncoderConfig
from emostore.extract.runner import run_extraction
from emostore.ingest.base import finalize
from emostore.store import Store


class CharEncoder(Encoder):
    """Per row: [length, turn]; frames: the character codes. 'FAIL' rows fail, 'BOOM' raises (unless
    $CHARS_CRASH is 0)."""

    modality = "audio"
    kind = "chars"
    block_rows = 3

    def __init__(self, config: EncoderConfig | None = None, *, name: str | None = None):
        self.runtime = {}
        self.name, self.dim, self.seq_dim = name or "chars", 2, 1
        self.config = config or EncoderConfig()

    def encode_rows(self, table, rows, progress=None):
        values, ok, reasons, seqs = [], [], [], []
        for r in rows:
            text = table["text"].iat[r]
            if "BOOM" in text and os.environ.get("CHARS_CRASH", "1") == "1":
                raise RuntimeError("decoder crashed")
            good = "FAIL" not in text
            values.append([len(text), table["turn"].iat[r]])
            ok.append(good)
            reasons.append("" if good else f"cannot decode {text!r}")
            seqs.append(np.array([ord(c) for c in text], np.float32)[:, None])
        if progress:
            progress(len(rows))
        return Encoded(np.array(values, np.float32), np.array(ok), reasons, seqs)


def table(n: int = 23) -> pd.DataFrame:
    texts = [("x" * (i % 7 + 1)) for i in range(n)]
    texts[4] = "FAIL here"
    texts[17] = "BOOM"
    df = pd.DataFrame({"id": [f"u{i}" for i in range(n)], "dialogue": "d", "turn": range(n), "text": texts})
    return finalize(df, "toy", [], "toy")


@pytest.mark.parametrize("workers", [1, 2])
def test_an_encoder_that_raises_stops_the_run_and_a_rerun_retries(tmp_path, monkeypatch, workers):
    """In one process or in worker processes alike: the encoder's error stops the run, the chunk
    being encoded stays pending (no failed rows), the chunks before it are kept, and the rerun,
    once the encoder works, computes only what is left."""
    store = Store.create(tmp_path / "s", table(), dataset="toy")
    with pytest.raises(RuntimeError, match="decoder crashed"):
        run_extraction(store, CharEncoder(), chunk_rows=5, progress=False, workers=workers)
    fs = store.feature_set("audio/chars")
    assert fs.done()[:15].all() and not fs.done()[15:].any()
    assert not any(i in {"u15", "u16", "u17"} for _, i, _ in fs.errors())
    monkeypatch.setenv("CHARS_CRASH", "0")  # the bug fixed (workers read it when they start)
    again = run_extraction(store, CharEncoder(), chunk_rows=5, progress=False, workers=workers)
    assert again.complete and again.chunks_run == 2 and again.rows_run == 8
    assert store.feature_set("audio/chars").mask()[15:18].all()


def test_sequences_ragged_and_failures_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARS_CRASH", "0")
    store = Store.create(tmp_path / "s", table(), dataset="toy")
    report = run_extraction(store, CharEncoder(), chunk_rows=5, progress=False, workers=2)
    assert report.complete and report.rows_run == 23
    fs = store.feature_set("audio/chars")
    ids, X, mask = fs.read()
    assert X[3].tolist() == [4.0, 3.0] and mask[3]
    assert not mask[4] and "cannot decode" in dict((i, r) for _, i, r in fs.errors())["u4"]  # a row failed alone
    assert mask[5:].all()
    seq = fs.read_sequence(6)
    assert seq.shape == (7, 1) and (seq[:, 0] == ord("x")).all()
    assert fs.read_sequence(4).shape == (0, 1)  # failed rows keep no frames
    all_seqs = fs.read_sequences()
    assert [len(s) for s in all_seqs][:4] == [1, 2, 3, 4]
    np.testing.assert_array_equal(all_seqs[10], fs.read_sequence(10))


def test_workers_match_single_process(tmp_path):
    t = table().assign(text=[f"row {i}" for i in range(23)])
    a = Store.create(tmp_path / "a", t, dataset="toy")
    b = Store.create(tmp_path / "b", t, dataset="toy")
    run_extraction(a, CharEncoder(), chunk_rows=4, progress=False)
    run_extraction(b, CharEncoder(), chunk_rows=4, progress=False, workers=2)
    for x, y in zip(a.read("audio/chars"), b.read("audio/chars")):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(a.feature_set("audio/chars").read_sequences(), b.feature_set("audio/chars").read_sequences()):
        np.testing.assert_array_equal(x, y)


class PastTurnsEncoder(Encoder):
    """Per row: [its text's length, the characters of its dialogue's earlier turns] (reads context)."""

    modality = "text"
    kind = "past-turns"
    block_rows = 2

    def __init__(self, config: EncoderConfig | None = None, *, name: str | None = None):
        self.runtime = {}
        self.name, self.dim, self.seq_dim = name or "past", 2, None
        self.config = config or EncoderConfig()

    def encode_rows(self, table, rows, progress=None):
        values = []
        for r in rows:
            same = (table["dialogue"] == table["dialogue"].iat[r]) & (table["turn"] < table["turn"].iat[r])
            values.append([len(table["text"].iat[r]), sum(len(t) for t in table["text"][same])])
        if progress:
            progress(len(rows))
        return Encoded(np.array(values, np.float32), np.ones(len(rows), bool), [""] * len(rows))


def test_worker_blocks_carry_their_dialogues_other_turns(tmp_path):
    # dialogues cut across blocks (2 rows) and chunks (5 rows): a worker sees every turn of a block's dialogues
    n = 23
    t = finalize(pd.DataFrame({"id": [f"u{i}" for i in range(n)], "dialogue": [f"d{i // 4}" for i in range(n)],
                               "turn": [i % 4 for i in range(n)], "text": ["y" * (i + 1) for i in range(n)]}),
                 "toy", [], "toy")
    a = Store.create(tmp_path / "a", t, dataset="toy")
    b = Store.create(tmp_path / "b", t, dataset="toy")
    run_extraction(a, PastTurnsEncoder(), chunk_rows=5, progress=False)
    run_extraction(b, PastTurnsEncoder(), chunk_rows=5, progress=False, workers=2)
    _, X, _ = a.read("text/past")
    assert X[7].tolist() == [8.0, 5 + 6 + 7]  # row 7: turn 3 of d1 (rows 4-6 before it)
    np.testing.assert_array_equal(X, b.read("text/past")[1])


def test_workers_share_the_cores_out(monkeypatch):
    import os

    from emostore.extract.runner import THREAD_VARIABLES, start_workers

    for k in THREAD_VARIABLES:
        monkeypatch.delenv(k, raising=False)
    pool = start_workers(2)
    try:
        seen = {k: pool.submit(os.getenv, k).result(timeout=60) for k in THREAD_VARIABLES}
    finally:
        pool.shutdown()
    assert seen == dict.fromkeys(THREAD_VARIABLES, str(max(1, (os.cpu_count() or 1) // 2)))
    assert not any(k in os.environ for k in THREAD_VARIABLES)  # the parent's own settings are as they were
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice stands
    pool = start_workers(2)
    try:
        assert pool.submit(os.getenv, "OMP_NUM_THREADS").result(timeout=60) == "3"
    finally:
        pool.shutdown()
