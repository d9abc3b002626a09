"""The CSV adapter: default headers, named columns, derived fields, bad rows, several files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE

from emostore.ingest.base import IngestError
from emostore.ingest.csv_table import CsvAdapter
from emostore.ingest.run import ingest


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def test_sample_with_default_headers_needs_no_option():
    r = CsvAdapter().load([SAMPLE], dataset="sample")
    t = r.table
    assert len(t) == 385 and t["id"].is_unique
    assert t["split"].value_counts().to_dict() == {"train": 268, "test": 66, "dev": 51}
    assert set(t["emotion"]) == {"neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"}
    assert r.notes == [] and not r.problems
    assert t.loc[t["id"] == "d001_u01", "turn"].item() == 1


def test_named_columns_and_numeric_sentiment(tmp_path):
    f = write(tmp_path / "corpus.csv", """
        utt,conv,who,sentence,feeling,score,fold,extra_note
        x1,c1,Ann,I love this!,Happy,2.5,train,a
        x2,c1,Bob,Me too.,happy,1.0,valid,b
        x3,c2,Ann,Awful day.,SAD,-2,test,c
        """)
    r = CsvAdapter().load([f], columns={"id": "utt", "dialogue": "conv", "speaker": "who", "text": "sentence",
                                        "emotion": "feeling", "sentiment": "score", "split": "fold"})
    t = r.table.set_index("id")
    assert t.loc["x3", "emotion"] == "sad" and t.loc["x2", "split"] == "dev"
    assert t["sentiment_score"].tolist() == [2.5, 1.0, -2.0] and t["sentiment"].isna().all()
    assert t.loc["x2", "turn"] == 1 and t.loc["x3", "turn"] == 0  # derived from order in dialogue
    assert t.loc["x1", "extra_note"] == "a"
    assert any("turns are the order" in n for n in r.notes)


def test_missing_named_column_is_a_clear_error(tmp_path):
    f = write(tmp_path / "c.csv", "text,emotion\nhello,joy\n")
    with pytest.raises(IngestError, match=r"c\.csv: column\(s\) emotion \('label'\) not found"):
        CsvAdapter().load([f], columns={"emotion": "label"})
    g = write(tmp_path / "d.csv", "words,label\nhello,joy\n")
    with pytest.raises(IngestError, match="needs a text or a media column"):
        CsvAdapter().load([g])


def test_only_text_derives_ids_turns_and_splits(tmp_path):
    lines = "\n".join(f"sentence number {i}" for i in range(200))
    f = write(tmp_path / "bare.csv", "text\n" + lines + "\n")
    r = CsvAdapter().load([f])
    t = r.table
    assert t["id"].tolist()[:2] == ["bare-0", "bare-1"]
    assert (t["dialogue"] == t["id"]).all() and (t["turn"] == 0).all()
    counts = t["split"].value_counts()
    assert set(counts.index) == {"train", "dev", "test"} and counts["train"] > 120
    assert len(r.notes) == 5  # ids, dialogues, turns, splits, and no labels: each said
    assert any("no label column found (looked for 'emotion' and 'sentiment'" in n for n in r.notes)
    again = CsvAdapter().load([f]).table
    assert again["split"].tolist() == t["split"].tolist()  # derived splits are stable


def test_bad_rows_recorded_and_the_rest_goes_on(tmp_path):
    media = tmp_path / "clip.wav"
    media.write_bytes(b"RIFF")
    f = write(tmp_path / "bad.csv", """
        id,dialogue,turn,speaker,text,emotion,split,media,start,end
        a,d1,0,Ann,Hello there,neutral,train,,,
        a,d1,1,Bob,Duplicate id,joy,train,,,
        b,d1,x,Bob,Bad turn,joy,train,,,
        c,d1,2,Ann,,anger,train,,,
        d,d1,3,Bob,  ,anger,train,clip.wav,1.0,2.5
        e,d1,4,Ann,Backwards,fear,train,missing.wav,3.0,2.0
        f,d1,5,Bob,Fine,joy,test,,,
        """)
    r = CsvAdapter().load([f])
    t = r.table.set_index("id")
    assert list(t.index) == ["a", "b", "d", "e", "f"]
    assert t.loc["a", "text"] == "Hello there"  # the first of the duplicates is kept
    assert t.loc["b", "turn"] == 2  # bad turn replaced by the row's order in the dialogue
    assert t.loc["d", "text"] is None and t.loc["d", "media"] == str(media.resolve())
    assert (t.loc["d", "start"], t.loc["d", "end"]) == (1.0, 2.5)
    assert np.isnan(t.loc["e", "start"]) and np.isnan(t.loc["e", "end"])
    reasons = {(p.id, p.level): p.reason for p in r.problems}
    assert "duplicate utterance id 'a'" in reasons[("a", "error")]
    assert "not a non-negative integer" in reasons[("b", "warning")]
    assert "no media; row dropped" in reasons[("c", "error")]
    assert not any(p.id == "d" for p in r.problems)  # media without text is data, not a problem
    assert any("1 of 7 rows have media and no text" in n for n in r.notes)
    assert "not after start" in reasons[("e", "error")]
    assert "media file not found" in reasons[("e", "warning")]
    assert all(p.source.endswith(("bad.csv", "missing.wav")) for p in r.problems)


def test_media_only_rows_give_one_note_not_a_problem_each(tmp_path):
    clips = []
    for i in range(30):
        clip = tmp_path / f"c{i}.wav"
        clip.write_bytes(b"RIFF")
        clips.append(f"{clip.name},anger")
    f = write(tmp_path / "audio.csv", "media,emotion\n" + "\n".join(clips) + "\n")
    store, r = ingest("csv", [f], tmp_path / "store")
    assert r.problems == [] and store.info()["problems"] == 0
    assert [n for n in r.notes if "media and no text" in n] == [
        "audio.csv: 30 of 30 rows have media and no text (their text features will be masked)"]


def test_several_files_one_per_split_and_unreadable_file(tmp_path):
    tr = write(tmp_path / "train.csv", "text,emotion\nHappy days,joy\nSo sad,sadness\n")
    te = write(tmp_path / "test.csv", "text,emotion\nWhat a mess,disgust\n")
    junk = tmp_path / "dev.csv"
    junk.write_bytes(bytes(range(256)) * 4)
    store, r = ingest("csv", [tr, te, junk, tmp_path / "absent.csv"], tmp_path / "store")
    assert store.table["split"].tolist() == ["train", "train", "test"]
    assert store.table["id"].tolist() == ["train-0", "train-1", "test-0"]
    errors = [p for p in r.problems if p.level in ("error", "warning")]
    assert any(p.source.endswith("absent.csv") and "not found" in p.reason for p in errors)
    assert any(p.source.endswith("dev.csv") for p in errors)
    assert len(store.table_attrs["problems"]) == len(errors)


def test_no_usable_rows_is_an_error(tmp_path):
    f = write(tmp_path / "empty.csv", "text,emotion\n,joy\n")
    with pytest.raises(IngestError, match="no usable"):
        CsvAdapter().load([f])


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-8-sig"])
def test_utf16_and_byte_order_marks_are_read_and_said(tmp_path, encoding):
    """UTF-16 (with a byte-order mark, or without: its zero bytes) reads as the same table, and
    the problems say which encoding was used; a UTF-8 byte-order mark needs no word."""
    f = tmp_path / "sample.csv"
    f.write_text(SAMPLE.read_text(encoding="utf-8"), encoding=encoding)
    r = CsvAdapter().load([f], dataset="sample")
    ref = CsvAdapter().load([SAMPLE], dataset="sample")
    assert r.table["text"].tolist() == ref.table["text"].tolist()
    said = [p.reason for p in r.problems]
    assert said == ([] if encoding == "utf-8-sig" else [f"read as {encoding.upper()} (its byte-order mark or "
                                                        "zero bytes say so)"])


def test_a_binary_file_is_refused_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from emostore.cli import app

    f = tmp_path / "corpus.csv"
    f.write_bytes(b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)) * 8)  # a spreadsheet saved as .csv
    r = CliRunner().invoke(app, ["ingest", "csv", str(f), "--out", str(tmp_path / "s")])
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1, r.output
    assert "corpus.csv" in r.stderr and "not a text file" in r.stderr, r.stderr


def test_headers_match_in_any_case_and_say_so(tmp_path):
    f = write(tmp_path / "cased.csv", """
        ID,Dialogue,Turn,Speaker,Text,Emotion,Split
        x1,c1,0,Ann,I love this!,Joy,train
        x2,c1,1,Bob,Me too.,joy,test
        """)
    r = CsvAdapter().load([f])
    assert r.table["emotion"].tolist() == ["joy", "joy"] and r.table["id"].tolist() == ["x1", "x2"]
    assert "cased.csv: header 'Emotion' taken as emotion (asked for 'emotion'; case ignored)" in r.notes
    assert not any("no label column" in n for n in r.notes)


def test_warnings_go_to_stderr_and_the_summary_to_stdout(tmp_path):
    """A Windows-1252 file: the summary (and its notes) on stdout, the encoding warning on stderr."""
    from typer.testing import CliRunner

    from emostore.cli import app

    f = tmp_path / "cafe.csv"
    f.write_bytes("text,emotion,split\nUn café, s'il vous plaît,joy,train\nNon merci,anger,test\n"
                  .replace(", s'il", " s'il").encode("cp1252"))
    r = CliRunner().invoke(app, ["ingest", "csv", str(f), "--out", str(tmp_path / "s")], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "ingested 2 utterances from cafe" in r.stdout and "(train 1, test 1); 2 emotions" in r.stdout
    assert "note: cafe.csv: no 'id' column" in r.stdout
    assert "not UTF-8; read as Windows-1252" in r.stderr and "Windows-1252" not in r.stdout
