"""CMU-MOSI / CMU-MOSEI adapters: real label CSVs and small synthetic computational sequences."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import shared_data

from emostore.ingest.base import COLUMNS, IngestError, hashed_split
from emostore.ingest.cmu import EMOTIONS6, MoseiAdapter, MosiAdapter


def write_csd(path: Path, root: str, data: dict[str, tuple[np.ndarray, list[list[float]]]]) -> Path:
    """A computational sequence in the CMU SDK layout."""
    with h5py.File(path, "w") as f:
        group = f.create_group(root)
        for key, (features, intervals) in data.items():
            video = group.create_group(f"data/{key}")
            video["features"] = features
            video["intervals"] = np.asarray(intervals, dtype=float)
        group.create_group("metadata").attrs["root name"] = root
    return path


def words(*pairs: tuple[str, float, float]) -> tuple[np.ndarray, list[list[float]]]:
    return (np.array([[w.encode()] for w, _, _ in pairs], dtype="S16"),
            [[s, e] for _, s, e in pairs])


@pytest.fixture()
def mosi_dir(tmp_path: Path) -> Path:
    # labels: vidA has two segments stored out of time order; vidB one segment with no words
    write_csd(tmp_path / "labels.csd", "Opinion Segment Labels", {
        "vidA": (np.array([[-1.5], [2.0]]), [[5.0, 9.0], [0.0, 4.0]]),
        "vidB": (np.array([[0.0]]), [[0.0, 3.0]]),
    })
    write_csd(tmp_path / "tokens.csd", "words", {
        "vidA": words(("sp", 0.0, 0.5), ("i", 0.5, 1.0), ("liked", 1.0, 2.0), ("it", 2.0, 3.5),
                      ("but", 5.0, 6.0), ("sp", 6.0, 6.5), ("not", 6.5, 7.0), ("much", 7.0, 8.0),
                      ("stray", 10.0, 11.0)),  # outside every segment
        "vidB": words(("sp", 0.0, 3.0)),
    })
    return tmp_path


def test_real_mosi_csv() -> None:
    result = MosiAdapter().load(shared_data("cmu_mosi"))
    t = result.table
    assert list(t.columns[: len(COLUMNS)]) == COLUMNS
    assert len(t) == 2199 and t["id"].is_unique
    assert t["split"].value_counts().to_dict() == {"train": 1284, "dev": 229, "test": 686}
    assert t["sentiment_score"].between(-3, 3).all()
    assert t["text"].notna().all() and t["media"].isna().all()
    assert (t["speaker"] == t["dialogue"]).all() and set(t["dataset"]) == {"mosi"}
    first = t[t["dialogue"] == "_dI--eQ6qVU"].sort_values("turn")
    assert first["turn"].tolist() == list(range(len(first)))
    assert first["start"].is_monotonic_increasing
    assert not [p for p in result.problems if p.level == "error"]


def test_real_mosei_labels_csv() -> None:
    root = shared_data("cmu_mosei")
    result = MoseiAdapter().load(root / "CMU_MOSEI_Labels.csv")
    t = result.table
    assert len(t) == 23259 and t["id"].is_unique
    raw = pd.read_csv(root / "CMU_MOSEI_Labels.csv", dtype={"file": str})
    folds = json.loads((root / "std_folds.json").read_text())
    fold_of = {v: {"valid": "dev"}.get(k, k) for k, vids in folds.items() for v in vids}
    expected = raw["file"].map(fold_of)
    assert t["split"].tolist() == [s if isinstance(s, str) else None for s in expected]
    assert t["split"].value_counts().to_dict() == {"train": 16327, "dev": 1871, "test": 4662}
    assert t["text"].isna().all()
    assert (t["sentiment_score"] == raw["label7"]).all()
    assert set(t["emotion"]) == {"happy", "sad", "anger", "surprise", "disgust", "fear"}
    assert any("outside the standard folds" in n for n in result.notes)


def test_mosi_csd_segments_text_and_folds(mosi_dir: Path) -> None:
    (mosi_dir / "std_folds.json").write_text(json.dumps({"train": ["vidA"], "valid": [], "test": ["vidB"]}))
    result = MosiAdapter().load(mosi_dir)
    t = result.table.set_index("id")
    assert list(t.index) == ["vidA_1", "vidA_2", "vidB_1"]
    assert t.loc["vidA_1", "text"] == "i liked it" and t.loc["vidA_1", "sentiment_score"] == 2.0
    assert t.loc["vidA_2", "text"] == "but not much" and t.loc["vidA_2", "sentiment"] == "negative"
    assert t.loc["vidA_2", ["start", "end"]].tolist() == [5.0, 9.0]
    assert t["turn"].tolist() == [0, 1, 0]
    assert t.loc["vidB_1", "text"] is None and t.loc["vidB_1", "sentiment"] == "neutral"
    assert t["split"].tolist() == ["train", "train", "test"]
    assert t["emotion"].isna().all() and t["media"].isna().all()
    assert [(p.id, p.level) for p in result.problems] == [("vidB_1", "warning")]
    assert result.meta["split_source"] == "folds"


def test_derived_splits_without_folds(mosi_dir: Path) -> None:
    result = MosiAdapter().load(mosi_dir / "labels.csd")  # a single file, no words: text empty
    t = result.table
    assert t["split"].tolist() == [hashed_split(v) for v in t["dialogue"]]
    assert any("hashing" in n for n in result.notes)
    assert t["text"].isna().all() and not result.problems


def test_mosei_csd_emotions_and_segment_keys(tmp_path: Path) -> None:
    write_csd(tmp_path / "CMU_MOSEI_Labels.csd", "All Labelled Data", {
        "vid1": (np.array([[1.0, 1.0, 0.3, 0, 0, 0, 0], [-1.0, 0, 0.5, 2.0, 0, 0, 0]]), [[0, 2], [2, 4]]),
        "vid2[3]": (np.zeros((1, 7)), [[10.0, 12.0]]),
    })
    write_csd(tmp_path / "CMU_MOSEI_TimestampedWords.csd", "words",
              {"vid2": words(("hello", 10.0, 11.0), ("there", 11.5, 13.0))})
    result = MoseiAdapter().load(tmp_path, folds=None)
    t = result.table.set_index("id")
    assert t["emotion"].to_dict() == {"vid1_1": "happy", "vid1_2": "anger", "vid2_3": "neutral"}
    assert t.loc["vid1_2", ["sad", "anger"]].tolist() == [0.5, 2.0]
    assert t.loc["vid2_3", "text"] == "hello" and t.loc["vid2_3", "dialogue"] == "vid2"
    assert set(t["dataset"]) == {"mosei"}
    assert list(result.table.columns[len(COLUMNS):]) == list(EMOTIONS6)


def test_corrupt_csd_recorded_and_other_file_loads(mosi_dir: Path) -> None:
    (mosi_dir / "tokens.csd").write_bytes(np.random.default_rng(0).bytes(4096))
    result = MosiAdapter().load(mosi_dir)
    assert len(result.table) == 3 and result.table["text"].isna().all()
    assert [p.source for p in result.problems] == [str(mosi_dir / "tokens.csd")]
    assert "unreadable" in result.problems[0].reason


def test_nothing_usable(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="looked for"):
        MosiAdapter().load(tmp_path)
    (tmp_path / "bad.csd").write_bytes(b"not hdf5")
    with pytest.raises(IngestError, match="bad.csd"):
        MoseiAdapter().load(tmp_path)


def test_segments_csv_split_column_beats_folds(tmp_path: Path) -> None:
    pd.DataFrame({
        "segment_id": ["v_2", "v_1", "w_1"], "video_id": ["v", "v", "w"], "clip_id": [2, 1, 1],
        "text": ["B", "A", "C"], "sentiment": [0.4, -2.0, 1.0], "start": [3.0, 1.0, 0.0],
        "end": [4.0, 2.0, 1.0], "split": ["valid", "valid", None],
    }).to_csv(tmp_path / "segments.csv", index=False)
    folds = tmp_path / "folds.json"
    folds.write_text(json.dumps({"train": ["v", "w"], "valid": [], "test": []}))
    t = MosiAdapter().load(tmp_path / "segments.csv", folds=folds).table.set_index("id")
    assert t["split"].to_dict() == {"v_2": "dev", "v_1": "dev", "w_1": "train"}
    assert t["turn"].to_dict() == {"v_2": 1, "v_1": 0, "w_1": 0}


def test_mosei_csv_codes(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text(
        ",file,index,start,end,label2a,label2b,label6,label7,split\n"
        "0,81406,0,1.0,2.0,1,1,0,2,0\n0,81406,1,0.0,1.0,0,-1,4,-3,2\n2,zz,0,0,1,1,0,1,0,3\n")
    result = MoseiAdapter().load(tmp_path)
    t = result.table.set_index("id")
    assert t["emotion"].to_dict() == {"81406_0": "happy", "81406_1": "disgust", "zz_0": "sad"}
    assert t["split"].to_dict() == {"81406_0": "train", "81406_1": "test", "zz_0": None}
    assert t["sentiment"].tolist() == ["positive", "negative", "neutral"]
    assert t.loc["81406_0", "turn"] == 1 and t.loc["81406_0", "dialogue"] == "81406"


def test_mosei_summary_counts_rows_without_a_fold_in_words(tmp_path: Path) -> None:
    """The ingest summary names the rows outside the folds "no split", not Python's ``None``."""
    from typer.testing import CliRunner

    from emostore.cli import app

    root = shared_data("cmu_mosei")
    r = CliRunner().invoke(app, ["ingest", "mosei", str(root), "--out", str(tmp_path / "s")], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "(train 16327, test 4662, dev 1871, no split 399); 6 emotions" in r.stdout
    assert "None" not in r.stdout and "{" not in r.stdout
