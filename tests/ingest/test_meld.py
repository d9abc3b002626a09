"""MELD from ../shared: counts, ids, mojibake repair, MELD.Raw clip linking; full text extraction."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import rounding, shared_data

from emostore.ingest.base import IngestError
from emostore.ingest.meld import MeldAdapter
from emostore.ingest.run import ingest

EMOTIONS = {"neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"}


@pytest.fixture(scope="module")
def meld_result():
    return MeldAdapter().load(shared_data("meld"))


def test_meld_counts_and_columns(meld_result):
    t = meld_result.table
    assert len(t) == 13708
    assert t["split"].value_counts().to_dict() == {"train": 9989, "test": 2610, "dev": 1109}
    assert set(t["emotion"]) == EMOTIONS
    assert set(t["sentiment"]) == {"neutral", "positive", "negative"}
    assert t["id"].is_unique and t["text"].notna().all()
    assert t.groupby("split")["dialogue"].nunique().to_dict() == {"train": 1038, "dev": 114, "test": 280}
    row = t.loc[t["id"] == "meld-dev-dia0-utt1"].iloc[0]
    assert (row["speaker"], row["text"], row["emotion"], row["turn"]) == ("Monica", "What?", "surprise", 1)
    assert row["episode_start"] == pytest.approx(21 * 60 + 1.927)
    assert t["media"].isna().all()
    assert any("text only" in n for n in meld_result.notes)
    assert not [p for p in meld_result.problems if p.level == "error"]


def test_mojibake_is_detected_repaired_and_recorded(tmp_path, meld_result):
    src = shared_data("meld", "dev_sent_emo.csv")
    damaged = tmp_path / "meld"
    damaged.mkdir()
    clean_text = src.read_text(encoding="utf-8")
    # the damage seen in distributed copies: UTF-8 bytes decoded as Windows-1252 (bytes that
    # Windows-1252 leaves undefined, like the 0x9D of ”, kept as C1 controls)
    import ftfy.bad_codecs  # noqa: F401  (registers sloppy-windows-1252)

    broken = clean_text.encode("utf-8").decode("sloppy-windows-1252")
    assert "â€™" in broken
    (damaged / "dev_sent_emo.csv").write_text(broken, encoding="utf-8")
    result = MeldAdapter().load(damaged)
    repairs = [p for p in result.problems if p.level == "repair"]
    dev = meld_result.table[meld_result.table["split"] == "dev"].reset_index(drop=True)
    assert result.table["text"].tolist() == dev["text"].tolist()
    assert len(repairs) > 50 and "â€™" in repairs[0].reason and repairs[0].id.startswith("meld-dev-")
    store, _ = ingest("meld", damaged, tmp_path / "store")
    assert len(store.table_attrs["repairs"]) == len(repairs)
    assert store.info()["repairs"] == len(repairs)
    # switched off, the damage stays
    raw = MeldAdapter().load(damaged, fix_mojibake=False)
    assert raw.table["text"].str.contains("â€™").any()


def test_meld_raw_clips_linked_and_missing_reported(tmp_path):
    root = tmp_path / "MELD"
    root.mkdir()
    shutil.copy(shared_data("meld", "dev_sent_emo.csv"), root)
    clips = root / "MELD.Raw" / "dev_splits_complete"
    clips.mkdir(parents=True)
    for d, u in [(0, 0), (0, 1), (1, 0)]:
        (clips / f"dia{d}_utt{u}.mp4").write_bytes(b"\x00")
    result = MeldAdapter().load(root)
    t = result.table.set_index("id")
    assert t.loc["meld-dev-dia0-utt1", "media"] == str((clips / "dia0_utt1.mp4").resolve())
    assert t["media"].notna().sum() == 3
    missing = [p for p in result.problems if "clip missing" in p.reason]
    assert len(missing) == 1109 - 3 and missing[0].level == "warning"
    skipped = [p for p in result.problems if "not found" in p.reason]
    assert len(skipped) == 2  # train and test CSVs are absent: reported, not fatal


def test_meld_errors(tmp_path):
    with pytest.raises(IngestError, match="not a directory"):
        MeldAdapter().load(tmp_path / "nope")
    (tmp_path / "train_sent_emo.csv").write_text("Utterance,Speaker\nhi,Ann\n")
    with pytest.raises(IngestError, match="missing column"):
        MeldAdapter().load(tmp_path)


@pytest.mark.slow
def test_full_meld_text_features(tmp_path, minilm_encoder):
    """The whole corpus: 13,708 rows, every one with a 384-d vector."""
    from emostore.extract.runner import run_extraction

    store, _ = ingest("meld", shared_data("meld"), tmp_path / "meld")
    report = run_extraction(store, minilm_encoder, progress=False)
    assert report.complete and report.rows_failed == 0
    ids, X, mask = store.read("text/minilm")
    assert X.shape == (13708, 384) and mask.all() and np.isfinite(X).all()
    assert np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=max(1e-4, rounding(minilm_encoder.precision)))
    info = store.info()
    assert info["features"]["text/minilm"]["rows_done"] == 13708
    _, Xt, mt = store.read("text/minilm", split="test")
    assert Xt.shape == (2610, 384) and mt.all()
