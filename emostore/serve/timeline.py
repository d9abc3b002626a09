"""An emotion timeline of a long recording: speech segments, each predicted like one utterance.

The recording is read a block at a time and cut by the :class:`~emostore.extract.segment.Segmenter`;
each segment is then predicted from the same file and span (``Inputs(audio|video=file, start, end)``),
so a segment's result is exactly what ``predict`` gives for that span. A transcript (CSV of start,
end, text) gives each segment the text of the pieces whose midpoint falls inside it; without one the
text modality is masked, like any modality the file lacks.

The same functions serve ``emostore predict --timeline`` (a :class:`Predictor` in this process) and the
server's ``POST /timeline`` (the server's batcher), and the browser page draws what they return.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emostore.errors import UserError
from emostore.extract.audio_io import MediaError, stream_audio
from emostore.extract.segment import RATE, Segment, Segmenter, SegmenterConfig
from emostore.serve.predictor import Inputs

#: Colours of the usual emotion labels (other labels take matplotlib's tab10 in order); the page has the same.
COLORS = {"neutral": "#9e9e9e", "joy": "#f2c12e", "happy": "#f2c12e", "happiness": "#f2c12e",
          "surprise": "#ff8c1a", "anger": "#d62728", "angry": "#d62728", "sadness": "#1f77b4", "sad": "#1f77b4",
          "disgust": "#2ca02c", "fear": "#9467bd", "boredom": "#8c564b", "excited": "#e377c2",
          "frustrated": "#7f3c8d"}


@dataclass(frozen=True)
class Piece:
    """One line of a transcript."""

    start: float
    end: float
    text: str

    @property
    def middle(self) -> float:
        return (self.start + self.end) / 2


def read_transcript(path: Path) -> list[Piece]:
    """A CSV file of ``start, end, text`` (seconds; a header row is optional), sorted by start."""
    if not path.is_file():
        raise UserError(f"transcript {path} does not exist")
    with open(path, newline="", encoding="utf-8") as fh:
        return parse_transcript(fh, f"transcript {path}")


def parse_transcript(lines: Iterable[str], name: str = "transcript") -> list[Piece]:
    """CSV lines of ``start, end, text``; a bad row is a :class:`UserError` naming ``name`` and the row."""
    pieces = []
    for n, row in enumerate(csv.reader(lines), start=1):
        if not row or (n == 1 and row[0].strip().lower() == "start"):
            continue
        if len(row) < 3:
            raise UserError(f"{name} row {n}: expected start, end, text; got {len(row)} column(s)")
        try:
            start, end = float(row[0]), float(row[1])
        except ValueError:
            raise UserError(f"{name} row {n}: start and end must be seconds, got {row[0]!r}, {row[1]!r}") from None
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
            raise UserError(f"{name} row {n}: bad span [{row[0]}, {row[1]}]")
        pieces.append(Piece(start, end, ",".join(row[2:]).strip()))
    return sorted(pieces, key=lambda p: p.start)


def text_for(start: float, end: float, pieces: list[Piece]) -> str | None:
    """The transcript pieces whose midpoint lies in [start, end), joined; None when there are none."""
    words = [p.text for p in pieces if start <= p.middle < end and p.text]
    return " ".join(words) if words else None


def segments_of(path: Path, config: SegmenterConfig | None = None,
                advance: Callable[[float], None] | None = None) -> Iterator[Segment]:
    """The speech segments of a file, as the segmenter closes them (``advance(seconds)`` after each block)."""
    seg = Segmenter(config)
    try:
        for block in stream_audio(path, RATE):
            yield from seg.feed(block)
            if advance:
                advance(len(block) / RATE)
    except MediaError as exc:
        raise UserError(exc.reason) from None
    yield from seg.flush()


def inputs_for(seg: Segment, path: Path, kind: str, pieces: list[Piece]) -> Inputs:
    """What a segment is predicted from: the file's span, and the transcript's text for it."""
    return Inputs(text=text_for(seg.start, seg.end, pieces), start=seg.start, end=seg.end, **{kind: path})


def entry(seg: Segment, result: dict[str, Any] | Exception, text: str | None = None) -> dict[str, Any]:
    """One row of the timeline: the segment's span and its prediction (or why it has none)."""
    row: dict[str, Any] = {"id": seg.id, "start": round(seg.start, 3), "end": round(seg.end, 3)}
    if text:
        row["text"] = text
    if isinstance(result, Exception):
        row["error"] = str(result)
        return row
    for key in ("label", "score", "probabilities"):
        if key in result:
            row[key] = result[key]
    row["modalities"] = present_modalities(result)
    return row


def present_modalities(result: dict[str, Any]) -> list[str]:
    """The modalities a prediction was made from (``audio``, ``text``, ``visual``), in checkpoint order."""
    names = [n.split("/", 1)[0] for n, m in result.get("modalities", {}).items() if m.get("present")]
    return list(dict.fromkeys(names))


def summarize(rows: list[dict[str, Any]], duration: float) -> dict[str, Any]:
    """Time per emotion (seconds, share of the speech, segments), or the mean score for regression."""
    done = [r for r in rows if "error" not in r]
    speech = sum(r["end"] - r["start"] for r in done)
    out: dict[str, Any] = {"duration_s": round(duration, 3), "segments": len(rows), "speech_s": round(speech, 3),
                           "failed": len(rows) - len(done)}
    if done and "score" in done[0]:
        out["mean_score"] = round(sum(r["score"] * (r["end"] - r["start"]) for r in done) / max(speech, 1e-9), 4)
        return out
    per: dict[str, dict[str, float]] = {}
    for r in done:
        p = per.setdefault(r["label"], {"seconds": 0.0, "segments": 0})
        p["seconds"] += r["end"] - r["start"]
        p["segments"] += 1
    out["per_emotion"] = {k: {"seconds": round(v["seconds"], 3), "share": round(v["seconds"] / speech, 4),
                              "segments": int(v["segments"])}
                          for k, v in sorted(per.items(), key=lambda kv: -kv[1]["seconds"])}
    return out


def predict_file(predictor: Any, path: Path, kind: str = "audio", *, config: SegmenterConfig | None = None,
                 pieces: list[Piece] | None = None, batch: int = 8, progress: bool = True) -> dict[str, Any]:
    """The timeline of a file with a :class:`~emostore.serve.predictor.Predictor`, ``batch`` segments per
    forward pass, with a progress bar over the audio read."""
    from emostore.core.progress import progress_bar
    from emostore.extract.audio_io import audio_duration

    check_usable(predictor.modalities, kind, bool(pieces))
    pieces = pieces or []
    rows: list[dict[str, Any]] = []
    pending: list[Segment] = []
    total = audio_duration(path)
    seen = 0.0

    def run(segs: list[Segment]) -> None:
        items = [inputs_for(s, path, kind, pieces) for s in segs]
        for s, it, res in zip(segs, items, predictor.predict_many(items)):
            rows.append(entry(s, res, it.text))

    with progress_bar(enabled=progress, counts="{task.completed:.0f}/{task.total:.0f} s") as bar:
        task = bar.add_task(f"timeline {path.name}", total=total)

        def advance(seconds: float) -> None:
            nonlocal seen
            seen += seconds
            bar.update(task, completed=seen, description=f"timeline {path.name}: {len(rows) + len(pending)} segments")

        for seg in segments_of(path, config, advance):
            pending.append(seg)
            if len(pending) >= batch:
                run(pending)
                pending = []
        if pending:
            run(pending)
    return {"file": str(path), "segments": rows, "summary": summarize(rows, seen)}


def check_usable(modalities: list[str], kind: str, transcript: bool) -> None:
    """Refuse a timeline no segment could be predicted for (a text-only checkpoint without a transcript)."""
    fed = {"audio"} | ({"visual"} if kind == "video" else set()) | ({"text"} if transcript else set())
    if not fed & set(modalities):
        raise UserError(f"this checkpoint reads {', '.join(sorted(set(modalities)))}, which a {kind} file "
                        f"{'and its transcript ' if transcript else ''}cannot feed"
                        + ("; give --transcript FILE" if "text" in modalities else ""))


def write_csv(timeline: dict[str, Any], path: Path) -> None:
    """One row per segment: id, start, end, label (or score), modalities, text, then a column per class."""
    rows = timeline["segments"]
    labels = list(dict.fromkeys(k for r in rows for k in r.get("probabilities", {})))
    fields = ["id", "start", "end", "label" if not any("score" in r for r in rows) else "score",
              "modalities", "text", "error", *labels]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "modalities": " ".join(r.get("modalities", [])), **r.get("probabilities", {})})


def colors(labels: list[str]) -> dict[str, str]:
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    tab = colormaps["tab10"]
    others = iter(to_hex(tab(i % 10)) for i in range(100))
    return {lab: COLORS.get(lab.lower()) or next(others) for lab in labels}


def plot(timeline: dict[str, Any], path: Path) -> None:
    """The timeline coloured by emotion, and under it each segment's class probabilities, stacked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = [r for r in timeline["segments"] if "error" not in r]
    duration = max([timeline["summary"]["duration_s"], *(r["end"] for r in rows)]) or 1.0
    labels = list(dict.fromkeys(k for r in rows for k in r.get("probabilities", {}))) or \
        list(dict.fromkeys(r.get("label", "?") for r in rows))
    cmap = colors(labels)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 4.5), sharex=True, height_ratios=(1, 2.5))
    for r in rows:
        top.broken_barh([(r["start"], r["end"] - r["start"])], (0, 1),
                        color=cmap.get(r.get("label", ""), "#555555"), linewidth=0)
    top.set_yticks([])
    top.set_xlim(0, duration)
    top.set_title(f"{Path(timeline['file']).name}: {len(rows)} segments")
    top.legend(handles=[Patch(color=cmap[k], label=k) for k in labels], loc="upper center", ncol=min(len(labels), 8),
               bbox_to_anchor=(0.5, -0.05), fontsize=8, frameon=False)
    below = [0.0] * len(rows)
    for lab in labels:  # each segment's probabilities, stacked in the legend's order
        ps = [r.get("probabilities", {}).get(lab, 0.0) for r in rows]
        bottom.bar([r["start"] for r in rows], ps, [r["end"] - r["start"] for r in rows], below, align="edge",
                   color=cmap[lab], linewidth=0)
        below = [b + p for b, p in zip(below, ps)]
    if rows and "score" in rows[0]:
        bottom.step([r["start"] for r in rows], [r["score"] for r in rows], where="post", color="k")
        bottom.set_ylabel("score")
    else:
        bottom.set_ylim(0, 1)
        bottom.set_ylabel("probability")
    bottom.set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
