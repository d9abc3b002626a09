"""IEMOCAP adapter on a small corpus written in the official folder layout."""

from __future__ import annotations

import math
import wave
from pathlib import Path

import pytest

from emostore.ingest.base import COLUMNS, IngestError, hashed_split
from emostore.ingest.iemocap import IemocapAdapter

EVAL_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"

# dialog -> (session, [(utt id, start, end, text, label or None for no evaluation line)])
CORPUS: dict[str, tuple[int, list[tuple[str, float, float, str, str | None]]]] = {
    "Ses01F_impro01": (1, [
        ("Ses01F_impro01_F000", 6.2901, 8.2357, "Excuse me.", "neu"),
        ("Ses01F_impro01_M000", 1.8100, 4.0000, "Hi.", "exc"),
        ("Ses01F_impro01_F001", 10.0100, 11.3925, "Yeah.", "hap"),
        ("Ses01F_impro01_M001", 12.0000, 14.5000, "Is there a problem?", "xxx"),
        ("Ses01F_impro01_F002", 15.0000, 16.0000, "No.", None),
    ]),
    "Ses01F_script01_1": (1, [
        ("Ses01F_script01_1_F000", 0.5, 2.0, "What is it?", "fru"),
        ("Ses01F_script01_1_M000", 2.5, 4.0, "Nothing.", "ang"),
    ]),
    "Ses02M_impro02": (2, [
        ("Ses02M_impro02_M000", 3.0, 5.0, "Did you hear?", "sad"),
        ("Ses02M_impro02_F000", 5.5, 7.25, "I did.", "oth"),
    ]),
    "Ses02M_impro03": (2, [
        ("Ses02M_impro03_F000", 1.0, 2.0, "Okay.", "neu"),
    ]),
    "Ses05F_impro01": (5, [
        ("Ses05F_impro01_F000", 1.0, 3.0, "Caf\u00e9 later?", "hap"),
        ("Ses05F_impro01_M000", 3.5, 5.0, "Sure.", "ang"),
    ]),
}
MISSING_WAV = "Ses01F_impro01_F001"
NO_AVI = "Ses02M_impro03"


def _write_wav(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x00\x00" * 160)


def _write_corpus(base: Path) -> Path:
    release = base / "IEMOCAP_full_release"
    for dialog, (session, utts) in CORPUS.items():
        sdir = release / f"Session{session}"
        lines = [f"{u} [{s:07.4f}-{e:07.4f}]: {t}" for u, s, e, t, _ in utts]
        lines[1:1] = ["M: breathing", f"{dialog}_MXX0 [020.0000-021.0000]: [LAUGHTER]"]
        trans = sdir / "dialog" / "transcriptions" / f"{dialog}.txt"
        trans.parent.mkdir(parents=True, exist_ok=True)
        encoding = "latin-1" if session == 5 else "utf-8"
        trans.write_bytes(("\n".join(lines) + "\n").encode(encoding))

        evals = [EVAL_HEADER]
        for u, s, e, _, label in utts:
            if label is None:
                continue
            evals.append(f"[{s:.4f} - {e:.4f}]\t{u}\t{label}\t[2.5000, 3.0000, 3.5000]\n"
                         "C-E1:\tNeutral;\t()\nA-E1:\tval 3; act 2; dom  3;\t()\n\n")
        evald = sdir / "dialog" / "EmoEvaluation"
        evald.mkdir(parents=True, exist_ok=True)
        (evald / f"{dialog}.txt").write_text("".join(evals))

        if dialog != NO_AVI:
            avi = sdir / "dialog" / "avi" / "DivX" / f"{dialog}.avi"
            avi.parent.mkdir(parents=True, exist_ok=True)
            avi.write_bytes(b"RIFF")
        if session != 2:  # session 2 has no sentences/wav folder at all
            for u, *_ in utts:
                if u != MISSING_WAV:
                    _write_wav(sdir / "sentences" / "wav" / dialog / f"{u}.wav")
    return release


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_corpus(tmp_path_factory.mktemp("iemocap"))


@pytest.fixture(scope="module")
def result6(corpus: Path):
    return IemocapAdapter().load(corpus.parent)


def _row(result, uid: str):
    table = result.table
    return table.loc[table["id"] == uid].iloc[0]


def test_rows_ids_and_columns(result6) -> None:
    table = result6.table
    expected = {u for _, utts in CORPUS.values() for u, *_ in utts}
    assert len(table) == len(expected) == 12
    assert set(table["id"]) == expected
    assert list(table.columns[:len(COLUMNS)]) == COLUMNS
    for col in ("emotion_raw", "valence", "arousal", "dominance", "video", "video_start",
                "video_end", "session"):
        assert col in table.columns
    assert (table["dataset"] == "iemocap").all()
    assert not table["id"].str.contains("XX").any()
    assert table["sentiment"].isna().all() and table["sentiment_score"].isna().all()


def test_speaker_text_and_turn_order(result6) -> None:
    assert _row(result6, "Ses01F_impro01_M000")["speaker"] == "Ses01_M"
    assert _row(result6, "Ses02M_impro02_F000")["speaker"] == "Ses02_F"
    assert _row(result6, "Ses01F_impro01_F000")["text"] == "Excuse me."
    assert _row(result6, "Ses05F_impro01_F000")["text"] == "Caf\u00e9 later?"  # latin-1 file
    dialog = result6.table[result6.table["dialogue"] == "Ses01F_impro01"].sort_values("turn")
    assert list(dialog["turn"]) == [0, 1, 2, 3, 4]
    assert list(dialog["id"]) == ["Ses01F_impro01_M000", "Ses01F_impro01_F000",
                                  "Ses01F_impro01_F001", "Ses01F_impro01_M001",
                                  "Ses01F_impro01_F002"]
    assert _row(result6, "Ses01F_script01_1_M000")["dialogue"] == "Ses01F_script01_1"


def test_six_class_labels_and_vad(result6) -> None:
    emo = dict(zip(result6.table["id"], result6.table["emotion"]))
    assert emo["Ses01F_impro01_M000"] == "excited"
    assert emo["Ses01F_impro01_F001"] == "happy"
    assert emo["Ses01F_script01_1_F000"] == "frustrated"
    assert emo["Ses02M_impro02_M000"] == "sad"
    # unlabelled turns stay in the table
    assert emo["Ses01F_impro01_M001"] is None and _row(result6, "Ses01F_impro01_M001")["emotion_raw"] == "xxx"
    assert emo["Ses02M_impro02_F000"] is None and _row(result6, "Ses02M_impro02_F000")["emotion_raw"] == "oth"
    no_eval = _row(result6, "Ses01F_impro01_F002")
    assert no_eval["emotion"] is None and no_eval["emotion_raw"] is None and math.isnan(no_eval["valence"])
    row = _row(result6, "Ses01F_impro01_F000")
    assert (row["valence"], row["arousal"], row["dominance"]) == (2.5, 3.0, 3.5)
    assert result6.meta["classes"] == 6 and result6.meta["test_session"] == 5
    assert any(p.id == "Ses01F_impro01_F002" and "evaluation" in p.reason for p in result6.problems)


def test_four_class_merges_excited(corpus: Path) -> None:
    result = IemocapAdapter().load(corpus, classes=4)
    emo = dict(zip(result.table["id"], result.table["emotion"]))
    assert emo["Ses01F_impro01_M000"] == "happy"  # exc
    assert emo["Ses01F_impro01_F001"] == "happy"  # hap
    assert emo["Ses01F_script01_1_F000"] is None  # fru
    assert set(result.table["emotion"].dropna()) == {"happy", "sad", "neutral", "angry"}
    assert len(result.table) == 12
    assert result.meta["label_map"]["exc"] == "happy"


def test_splits(result6) -> None:
    table = result6.table
    assert (table.loc[table["session"] == 5, "split"] == "test").all()
    assert set(table.loc[table["session"] != 5, "split"]) == {"train", "dev"}
    per_dialog = table.groupby("dialogue")["split"].nunique()
    assert (per_dialog == 1).all()
    for dialog, split in table.groupby("dialogue")["split"].first().items():
        if not dialog.startswith("Ses05"):
            assert split == hashed_split(dialog, dev=0.1, test=0.0)
    assert any("session 5 as test" in n for n in result6.notes)


def test_split_options(corpus: Path) -> None:
    table = IemocapAdapter().load(corpus, test_session=1, dev_fraction=0.0).table
    assert set(table.loc[table["session"] == 1, "split"]) == {"test"}
    assert set(table.loc[table["session"] != 1, "split"]) == {"train"}


def test_media_wav_then_avi(result6, corpus: Path) -> None:
    wav_row = _row(result6, "Ses01F_impro01_F000")
    assert wav_row["media"] == str((corpus / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav").resolve())
    assert math.isnan(wav_row["start"]) and math.isnan(wav_row["end"])
    assert wav_row["video"].endswith("Session1/dialog/avi/DivX/Ses01F_impro01.avi")
    assert (wav_row["video_start"], wav_row["video_end"]) == (6.2901, 8.2357)

    avi_row = _row(result6, MISSING_WAV)
    assert avi_row["media"].endswith("Ses01F_impro01.avi") and Path(avi_row["media"]).is_absolute()
    assert (avi_row["start"], avi_row["end"]) == (10.01, 11.3925)

    assert _row(result6, "Ses02M_impro02_M000")["media"].endswith("Ses02M_impro02.avi")
    none_row = _row(result6, "Ses02M_impro03_F000")
    assert none_row["media"] is None and none_row["video"] is None


def test_missing_media_warnings(result6) -> None:
    warnings = [p for p in result6.problems if p.level == "warning"]
    assert any(p.id == MISSING_WAV and "wav" in p.reason for p in warnings)
    session_wav = [p for p in warnings if "Session2" in p.source and "wav" in p.reason]
    assert len(session_wav) == 1  # one for the whole session, not one per turn
    assert sum(NO_AVI in p.source and "video" in p.reason for p in warnings) == 1
    assert all(p.level == "warning" for p in result6.problems)


def test_garbled_file_is_recorded(tmp_path: Path) -> None:
    release = _write_corpus(tmp_path)
    (release / "Session1/dialog/transcriptions/Ses01F_impro01.txt").write_bytes(b"\xff\xfe\x00garbage\n")
    result = IemocapAdapter().load(release)
    assert not result.table["dialogue"].eq("Ses01F_impro01").any()
    assert len(result.table) == 7
    assert any("Ses01F_impro01.txt" in p.source for p in result.problems)


def test_errors(tmp_path: Path, corpus: Path) -> None:
    with pytest.raises(IngestError, match="no IEMOCAP sessions"):
        IemocapAdapter().load(tmp_path)
    with pytest.raises(IngestError, match="no IEMOCAP sessions"):
        IemocapAdapter().load(tmp_path / "absent")
    with pytest.raises(IngestError, match="4 or 6"):
        IemocapAdapter().load(corpus, classes=7)
