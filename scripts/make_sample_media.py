"""Synthesise speech for part of the built-in sample, so that audio extraction has media to read.

Two utterances of every emotion in every split of ``emostore/sample/dialogues.csv`` are spoken
by espeak-ng (a development tool: ``apt-get install espeak-ng``). Each speaker gets a voice and
each emotion a prosody (rate, pitch, loudness), so the clips carry crude emotional cues. Output:
16 kHz mono 16-bit FLAC files ``emostore/sample/media/<id>.flac`` and the list
``emostore/sample/media.csv`` (``id,media``, paths relative to that file).

    python scripts/make_sample_media.py [--per-cell 2]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import soxr

SAMPLE = Path(__file__).resolve().parents[1] / "emostore" / "sample"
RATE = 16000
VOICES = ["en-us+m3", "en-us+f2", "en-gb+m1", "en-us+f4", "en-gb+f3", "en-us+m5"]
#: emotion -> espeak-ng words per minute, pitch (0-99), amplitude (0-200)
PROSODY: dict[str, tuple[int, int, int]] = {
    "neutral": (165, 50, 100), "joy": (185, 72, 120), "surprise": (175, 85, 125),
    "anger": (195, 58, 170), "sadness": (125, 28, 75), "fear": (205, 70, 95), "disgust": (145, 35, 110),
}


def choose(table: pd.DataFrame, per_cell: int) -> pd.DataFrame:
    """``per_cell`` utterances per (split, emotion), spread over the cell's rows in file order."""
    picks = []
    for _, cell in table.groupby(["split", "emotion"], sort=True):
        idx = np.unique(np.linspace(0, len(cell) - 1, per_cell).round().astype(int))
        picks.append(cell.iloc[idx])
    return pd.concat(picks).sort_index()


def voice(speaker: str) -> str:
    return VOICES[int(hashlib.sha1(speaker.encode()).hexdigest(), 16) % len(VOICES)]


def speak(text: str, speaker: str, emotion: str, out: Path, espeak: str) -> float:
    """Synthesise ``text`` into ``out`` (FLAC at RATE); returns the duration in seconds."""
    wpm, pitch, amp = PROSODY.get(emotion, PROSODY["neutral"])
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "say.wav"
        subprocess.run([espeak, "-v", voice(speaker), "-s", str(wpm), "-p", str(pitch), "-a", str(amp),
                        "-w", str(wav), text], check=True, capture_output=True)
        x, rate = sf.read(wav, dtype="float32")
    x = soxr.resample(x, rate, RATE) if rate != RATE else x
    sf.write(out, np.clip(x, -1.0, 1.0), RATE, format="FLAC", subtype="PCM_16")
    return len(x) / RATE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-cell", type=int, default=2, help="utterances per split and emotion")
    args = ap.parse_args()
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("espeak-ng not found: install it (apt-get install espeak-ng) and run again")
    table = pd.read_csv(SAMPLE / "dialogues.csv", dtype=str)
    chosen = choose(table, args.per_cell)
    media = SAMPLE / "media"
    if media.exists():
        shutil.rmtree(media)
    media.mkdir()
    seconds = 0.0
    for row in chosen.itertuples():
        seconds += speak(row.text, row.speaker, row.emotion, media / f"{row.id}.flac", espeak)
    pd.DataFrame({"id": chosen["id"], "media": [f"media/{i}.flac" for i in chosen["id"]]}).to_csv(
        SAMPLE / "media.csv", index=False)
    size = sum(p.stat().st_size for p in media.iterdir())
    print(f"{len(chosen)} clips, {seconds:.0f} s of speech, {size / 1e6:.2f} MB in {media}")


if __name__ == "__main__":
    main()
