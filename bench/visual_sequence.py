"""Faces over time: the ``sequence`` head on ``visual/landmarks`` frames of the real videos in
``../shared/data/face_media``, and ``emostore predict`` on a clip it never saw (issue 10).

There is no labelled video corpus here, so this is a functional check, not an accuracy claim:
three videos are cut into 1.5 s utterances labelled with the video they come from (every fifth
utterance is dev, the next test), the head trains on their per-frame face features
(blendshapes and geometry at 10 fps) through the command line, and ``predict --video`` answers
for ``single_face.mp4``, a fourth video. Writes a section of BENCHMARKS.md with ``--write``.

    python bench/visual_sequence.py [--write]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import av
import benchlib

from emostore.store import Store

ROOT = benchlib.ROOT
MEDIA = ROOT.parent / "shared" / "data" / "face_media"
TRAIN_VIDEOS = ("WolfgangLanger_Pexels.mp4", "woman2.mp4", "test.mp4")
NEW_CLIP = "single_face.mp4"
TITLE = "## Faces over time: the sequence head on visual/landmarks frames (issue 10)"


def emostore(*args: str) -> dict:
    cmd = [str(Path(sys.executable).with_name("emostore")), *args, "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def segments_csv(path: Path, length: float = 1.5) -> int:
    rows = ["id,dialogue,turn,speaker,emotion,split,media,start,end"]
    for name in TRAIN_VIDEOS:
        with av.open(str(MEDIA / name)) as c:
            duration = float(c.streams.video[0].duration * c.streams.video[0].time_base)
        for k in range(int(duration // length)):
            split = "dev" if k % 5 == 3 else "test" if k % 5 == 4 else "train"
            rows.append(f"{Path(name).stem}-{k},{Path(name).stem},{k},{Path(name).stem},{Path(name).stem},{split},"
                        f"{MEDIA / name},{k * length:.2f},{(k + 1) * length:.2f}")
    path.write_text("\n".join(rows) + "\n")
    return len(rows) - 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    load = Path("/proc/loadavg").read_text().split()[0]
    work = Path(tempfile.mkdtemp(prefix="emostore-visual-seq-"))
    n = segments_csv(work / "faces.csv")
    store = work / "store"
    emostore("ingest", "csv", str(work / "faces.csv"), "--out", str(store), "--dataset", "face_media")
    t = time.perf_counter()
    ex = emostore("extract", "visual", str(store), "--feature-set", "landmarks", "--fps", "10", "-q")
    extract_s = time.perf_counter() - t
    ckpt = work / "seq"
    t = time.perf_counter()
    tr = emostore("train", str(store), "-f", "visual/landmarks", "--head", "sequence", "-p", "hidden=64",
                  "--epochs", "40", "--patience", "10", "--device", "cpu", "--out", str(ckpt), "-q")
    train_s = time.perf_counter() - t
    ev = emostore("evaluate", str(ckpt), "--store", str(store), "--split", "test")
    t = time.perf_counter()
    pred = emostore("predict", str(ckpt), "--video", str(MEDIA / NEW_CLIP), "--device", "cpu")
    predict_s = time.perf_counter() - t
    frames = [len(f) for f in Store.open(store, mode="r").feature_set("visual/landmarks").read_sequences()]
    top = ", ".join(f"{k} {v:.2f}" for k, v in pred["probabilities"].items())
    lines = [
        TITLE, "",
        (f"Date {date.today().isoformat()}; machine: {benchlib.machine()}, no GPU, shared with other jobs (load "
         f"average {load} at the start). "
         "`python bench/visual_sequence.py`: a functional check, not an accuracy claim (no labelled video corpus "
         f"here). {', '.join(TRAIN_VIDEOS)} cut into {n} utterances of 1.5 s, labelled with their video; every "
         "fifth is dev, the next test."), "",
        "| step | result | seconds |", "|---|---|---|",
        (f"| `extract visual --feature-set landmarks --fps 10` | {ex['rows_run'] - ex['rows_failed']} of "
         f"{ex['rows_run']} utterances with a face; {min(frames)}-{max(frames)} frames each, {ex['seq_dim']}-d "
         f"| {extract_s:.1f} |"),
        (f"| `train --head sequence -f visual/landmarks` (GRU over the frames) | best dev weighted F1 "
         f"{tr['dev_score']:.3f} at epoch {tr['best_epoch']} of {tr['epochs_run']} | {train_s:.1f} |"),
        f"| `evaluate --split test` | accuracy {ev['accuracy']:.3f} on {ev['n']} test utterances (which video) | |",
        f"| `predict --video {NEW_CLIP}` (a video not in the store) | {pred['label']} ({top}) | {predict_s:.1f} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        benchlib.write_section(TITLE, text)


if __name__ == "__main__":
    main()
