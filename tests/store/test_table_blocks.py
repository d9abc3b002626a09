"""A table written in blocks (a corpus too big to hold at once) is the table written whole, with the same
summary; ``info`` reads that summary instead of the table."""

from __future__ import annotations

import pandas as pd
from conftest import SAMPLE

from emostore.ingest.base import get_adapter
from emostore.store import Store


def test_blocks_make_the_same_store_as_one_table(tmp_path):
    table = get_adapter("csv").load([SAMPLE], dataset="sample").table
    whole = Store.create(tmp_path / "whole", table, dataset="sample")
    blocks = Store.create(tmp_path / "blocks", (table.iloc[i:i + 100] for i in range(0, len(table), 100)),
                          dataset="sample", n_rows=len(table))
    pd.testing.assert_frame_equal(Store.open(tmp_path / "blocks").table, Store.open(tmp_path / "whole").table)
    summary = whole.table_attrs["summary"]
    assert blocks.table_attrs["summary"] == summary
    assert summary["utterances"] == 385 and summary["dialogues"] == 60 and summary["speakers"] == 123
    assert sum(summary["splits"].values()) == 385 and summary["with_text"] == 385
    info = Store.open(tmp_path / "blocks", mode="r").info()
    assert {k: info[k] for k in summary} == summary
    codes, names = blocks.codes("split")
    assert list(names) == ["dev", "test", "train"] and (names[codes] == table["split"].to_numpy()).all()


def test_ids_are_found_and_hashed_once(tmp_path):
    table = get_adapter("csv").load([SAMPLE], dataset="sample").table
    store = Store.create(tmp_path / "s", table, dataset="sample")
    first = table["id"].iloc[7]
    assert store.find_id(first) == 7 and store.find_id("no such id") is None
    assert store.table_attrs["summary"]["ids_with_spaces"] is False
    digest = store.ids_hash()
    assert Store.open(tmp_path / "s", mode="r").table_attrs["ids_hash"] == digest  # kept for readers
