"""IEMOCAP adapter: reads the official ``IEMOCAP_full_release`` folder layout.

Per session ``SessionN`` it reads ``dialog/transcriptions/<dialog>.txt`` (turns and text),
``dialog/EmoEvaluation/<dialog>.txt`` (label and valence/activation/dominance per turn),
and points each turn at ``sentences/wav/<dialog>/<utt>.wav``, falling back to the dialog
video ``dialog/avi/DivX/<dialog>.avi`` with the turn's time span.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from emostore.ingest.base import (
    Adapter,
    IngestError,
    IngestResult,
    Problem,
    finalize,
    hashed_split,
    register,
)

LABEL_MAPS: dict[int, dict[str, str]] = {
    6: {"hap": "happy", "sad": "sad", "neu": "neutral", "ang": "angry",
        "exc": "excited", "fru": "frustrated"},
    4: {"hap": "happy", "exc": "happy", "sad": "sad", "neu": "neutral", "ang": "angry"},
}

_UTTERANCE = re.compile(r"^(Ses\d\d[FM]_\S+_([FM])\d{3}\w*)\s*\[(\d+\.\d+)-(\d+\.\d+)\]:\s?(.*)$")
_EVALUATION = re.compile(
    r"^\[\s*(\d+\.\d+)\s*-\s*(\d+\.\d+)\s*\]\s+(Ses\S+)\s+(\S+)\s+\[([^\]]*)\]\s*$")
_SESSION = re.compile(r"^Session(\d+)$")
LAYOUT = ("IEMOCAP_full_release/Session1..Session5/dialog/transcriptions/*.txt "
          "(with dialog/EmoEvaluation, sentences/wav, dialog/avi/DivX)")


@dataclass
class _Label:
    raw: str
    vad: tuple[float, float, float]


def _read_text(path: Path) -> str:
    """File text as utf-8, or latin-1 when it is not valid utf-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _find_sessions(root: Path) -> dict[int, Path]:
    """Session number -> folder, looking in ROOT and in ROOT/IEMOCAP_full_release."""
    for base in (root, root / "IEMOCAP_full_release"):
        if not base.is_dir():
            continue
        found = {int(m.group(1)): d for d in base.iterdir()
                 if d.is_dir() and (m := _SESSION.match(d.name))
                 and (d / "dialog" / "transcriptions").is_dir()}
        if found:
            return dict(sorted(found.items()))
    return {}


def _parse_evaluation(path: Path, problems: list[Problem]) -> dict[str, _Label]:
    """Summary lines of one EmoEvaluation file: utterance id -> label and V/A/D."""
    labels: dict[str, _Label] = {}
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.startswith("["):
            continue  # header, per-evaluator lines, blanks
        m = _EVALUATION.match(line.strip())
        if not m:
            problems.append(Problem(str(path), "unreadable evaluation line", row=n, level="warning"))
            continue
        try:
            vad = tuple(float(v) for v in m.group(5).split(","))
        except ValueError:
            vad = ()
        if len(vad) != 3:
            problems.append(Problem(str(path), "unreadable valence/activation/dominance",
                                    row=n, id=m.group(3), level="warning"))
            vad = (math.nan, math.nan, math.nan)
        labels[m.group(3)] = _Label(m.group(4).lower(), vad)  # type: ignore[arg-type]
    return labels


def _parse_transcription(path: Path) -> list[tuple[str, str, float, float, str]]:
    """Utterance lines of one transcription file: (id, gender, start, end, text)."""
    rows = []
    for line in _read_text(path).splitlines():
        m = _UTTERANCE.match(line.strip())
        if m:
            rows.append((m.group(1), m.group(2), float(m.group(3)), float(m.group(4)),
                         m.group(5).strip()))
    return rows


@register
class IemocapAdapter(Adapter):
    """IEMOCAP dyadic sessions; every transcribed turn is a row, labelled or not."""

    name = "iemocap"

    def load(self, root: Path, *, classes: int = 6, test_session: int = 5,
             dev_fraction: float = 0.1) -> IngestResult:
        """Read ROOT (``IEMOCAP_full_release`` or its parent) into the utterance table.

        ``classes`` picks the 6-class or 4-class (happy+excited) label map; session
        ``test_session`` is the test split and the other sessions' dialogs are hashed
        into train/dev with ``dev_fraction``.
        """
        if classes not in LABEL_MAPS:
            raise IngestError(f"iemocap: classes must be 4 or 6, not {classes!r}")
        label_map = LABEL_MAPS[classes]
        root = Path(root)
        sessions = _find_sessions(root)
        if not sessions:
            raise IngestError(f"{root}: no IEMOCAP sessions found; expected {LAYOUT}")

        problems: list[Problem] = []
        records: list[dict[str, Any]] = []
        for number, folder in sessions.items():
            records.extend(self._load_session(number, folder, label_map, test_session,
                                              dev_fraction, problems))
        if not records:
            raise IngestError(f"{root}: no utterance lines in any transcription; expected {LAYOUT}")

        df = pd.DataFrame.from_records(records)
        for col in ("emotion_raw", "video"):  # keep None, not NaN, in the extra text columns
            df[col] = pd.Series([r[col] for r in records], index=df.index, dtype=object)
        others = [s for s in sessions if s != test_session]
        notes = [f"{len(others)} sessions for train/dev, session {test_session} as test"
                 if test_session in sessions else
                 f"session {test_session} not found: no test rows; {len(others)} sessions for train/dev",
                 f"{classes}-class labels; turns with other labels kept with emotion None"]
        return IngestResult(
            table=finalize(df, self.name, problems, str(root)), dataset=self.name,
            problems=problems, notes=notes,
            meta={"classes": classes, "label_map": dict(label_map), "test_session": test_session},
        )

    def _load_session(self, number: int, folder: Path, label_map: dict[str, str],
                      test_session: int, dev_fraction: float,
                      problems: list[Problem]) -> list[dict[str, Any]]:
        """Rows of one session folder, dialog by dialog."""
        wav_root = folder / "sentences" / "wav"
        has_wavs = wav_root.is_dir()
        if not has_wavs:
            problems.append(Problem(str(wav_root), "sentence wav folder missing for the whole "
                                    "session; using dialog videos", level="warning"))
        records: list[dict[str, Any]] = []
        for trans_path in sorted((folder / "dialog" / "transcriptions").glob("*.txt")):
            dialog = trans_path.stem
            try:
                turns = _parse_transcription(trans_path)
            except OSError as exc:
                problems.append(Problem(str(trans_path), f"unreadable transcription: {exc}"))
                continue
            if not turns:
                problems.append(Problem(str(trans_path), "no utterance lines found", level="warning"))
                continue

            eval_path = folder / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
            labels: dict[str, _Label] | None = None
            try:
                labels = _parse_evaluation(eval_path, problems)
            except OSError as exc:
                reason = "missing" if not eval_path.exists() else f"unreadable: {exc}"
                problems.append(Problem(str(eval_path), f"evaluation file {reason}; "
                                        f"{len(turns)} turns left unlabelled", level="warning"))

            avi = folder / "dialog" / "avi" / "DivX" / f"{dialog}.avi"
            video = str(avi.resolve()) if avi.is_file() else None
            avi_warned = False
            split = "test" if number == test_session else hashed_split(dialog, dev=dev_fraction, test=0.0)
            turns.sort(key=lambda t: t[2])  # stable: ties keep file order
            for turn, (uid, gender, start, end, text) in enumerate(turns):
                label = labels.get(uid) if labels is not None else None
                if labels is not None and label is None:
                    problems.append(Problem(str(eval_path), "no evaluation line for this turn",
                                            id=uid, level="warning"))
                wav = wav_root / dialog / f"{uid}.wav"
                media, m_start, m_end = None, math.nan, math.nan
                if has_wavs and wav.is_file():
                    media = str(wav.resolve())
                else:
                    if has_wavs:
                        problems.append(Problem(str(wav), "sentence wav missing", id=uid, level="warning"))
                    if video is not None:
                        media, m_start, m_end = video, start, end
                    elif not avi_warned:
                        problems.append(Problem(str(avi), "dialog video missing", level="warning"))
                        avi_warned = True
                raw = label.raw if label else None
                vad = label.vad if label else (math.nan, math.nan, math.nan)
                records.append({
                    "id": uid, "dataset": self.name, "dialogue": dialog, "turn": turn,
                    "speaker": f"{uid[:5]}_{gender}", "text": text, "media": media,
                    "start": m_start, "end": m_end, "emotion": label_map.get(raw or ""),
                    "sentiment": None, "sentiment_score": math.nan, "split": split,
                    "emotion_raw": raw, "valence": vad[0], "arousal": vad[1], "dominance": vad[2],
                    "video": video, "video_start": start, "video_end": end, "session": number,
                })
        return records
