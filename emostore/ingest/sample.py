"""The built-in sample (``emostore/sample``): 60 short conversations written for this project,
385 utterances with the 7 MELD emotions, split by dialogue. The 42 utterances with synthesised
speech get it as their media; with ``clips``, a short video of that speech over a face instead
(as ``emostore demo`` makes), so that visual features can be extracted too."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from emostore.ingest.base import Adapter, IngestResult, register
from emostore.ingest.csv_table import CsvAdapter

SAMPLE = Path(__file__).resolve().parents[1] / "sample"


def speech_files() -> dict[str, str]:
    """``{utterance id: absolute path of its speech}`` from the sample's ``media.csv``."""
    with open(SAMPLE / "media.csv", newline="", encoding="utf-8") as fh:
        return {row["id"]: str((SAMPLE / row["media"]).resolve()) for row in csv.DictReader(fh)}


@register
class SampleAdapter(Adapter):
    name = "sample"

    def load(self, root: Path = SAMPLE, *, clips: Path | None = None, **_: Any) -> IngestResult:  # type: ignore[override]
        result = CsvAdapter().load([Path(root) / "dialogues.csv"], dataset="sample")
        if clips is None:
            media, what = speech_files(), "speech (FLAC)"
        else:
            from emostore.sample.clips import build_sample_media

            media, what = build_sample_media(Path(clips)), f"a video of their speech over a face, in {clips}"
        result.table["media"] = [media.get(i) for i in result.table["id"]]
        result.notes.append(f"{len(media)} of {len(result.table)} utterances have {what} as their media; the "
                            "others' audio and visual features will be masked")
        return result
