"""``emostore predict CKPT --audio|--video FILE --timeline``: segment a recording, predict each segment,
report the timeline (a table, ``--json``, ``--csv FILE``) and plot it (``--plot FILE.png``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from emostore.errors import UserError


def run(checkpoint: Path, *, audio: Path | None, video: Path | None, text: str | None, image: Path | None,
        transcript: Path | None, as_json: bool, csv_path: Path | None, plot_path: Path | None, device: str,
        store: str | None) -> dict[str, Any]:
    from emostore.serve import timeline as tl
    from emostore.serve.predictor import Predictor

    if text is not None or image is not None:
        raise UserError("--timeline reads a recording: give --audio or --video (and --transcript for text), "
                        "not --text or --image")
    if (audio is None) == (video is None):
        raise UserError("--timeline needs one recording: --audio FILE or --video FILE")
    path, kind = (audio, "audio") if audio is not None else (video, "video")
    assert path is not None
    if not path.is_file():
        raise UserError(f"{kind} file {path} does not exist")
    pieces = tl.read_transcript(transcript) if transcript is not None else None
    for out in (csv_path, plot_path):
        if out is not None and not out.parent.is_dir():
            raise UserError(f"cannot write {out}: folder {out.parent} does not exist")
    predictor = Predictor(checkpoint, device=device, evidence_store=store)
    predictor.evidence = None  # evidence per segment is not part of a timeline
    result = tl.predict_file(predictor, path, kind, pieces=pieces, progress=not as_json)
    if csv_path is not None:
        tl.write_csv(result, csv_path)
    if plot_path is not None:
        tl.plot(result, plot_path)
    if as_json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        show(result, [p for p in (csv_path, plot_path) if p is not None])
    return result


def show(result: dict[str, Any], written: list[Path]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from emostore.display import console

    t = Table(title=f"{Path(result['file']).name}: {_count(len(result['segments']), 'segment')}")
    for col in ("#", "start", "end", "emotion", "p", "from"):
        t.add_column(col, justify="right" if col in ("#", "start", "end", "p") else "left")
    for r in result["segments"]:
        probs = r.get("probabilities", {})
        label = r.get("label", f"{r['score']:+.3f}" if "score" in r else "")
        t.add_row(str(r["id"]), f"{r['start']:.2f}", f"{r['end']:.2f}", escape(label or r.get("error", "")),
                  f"{probs[label]:.2f}" if label in probs else "", ", ".join(r.get("modalities", [])))
    console.print(t)
    s = result["summary"]
    console.print(f"{s['speech_s']:.1f} s of speech in {s['duration_s']:.1f} s"
                  + (f"; {_count(s['failed'], 'segment')} failed" if s["failed"] else ""))
    for label, v in s.get("per_emotion", {}).items():
        console.print(f"  {escape(label):<10} {v['seconds']:7.1f} s  {v['share']:6.1%}  "
                      f"({_count(v['segments'], 'segment')})")
    if "mean_score" in s:
        console.print(f"  mean score {s['mean_score']:+.3f}")
    for p in written:
        console.print(f"wrote {p}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
