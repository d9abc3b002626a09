"""Visual extraction speed: ``emostore extract visual`` against a bare Face Landmarker loop.

The work: the four ``face_media`` videos cut into 3-second utterances, repeated ``--repeat``
times (different ids), sampled at 5 fps. Both sides do the same per utterance: decode the video
with PyAV, take the frame on screen at each sampling instant, and run a fresh MediaPipe Face
Landmarker in VIDEO mode over those frames. The bare loop stops there; emostore also computes
the features, pools them and writes the store. Both run in this process (one worker), then
emostore runs with 2 worker processes. Each measurement is the best of ``--repeats`` runs.

    python bench/visual_speed.py [--repeat 8] [--repeats 3] [--out bench/out/visual_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import date
from pathlib import Path

import av
import mediapipe as mp
import numpy as np
import pandas as pd
from mediapipe.tasks.python import BaseOptions, vision

from emostore.extract.encoders.face import FaceLandmarkerEncoder, quiet_stderr
from emostore.extract.runner import run_extraction
from emostore.ingest.base import finalize
from emostore.store import Store

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
VIDEOS = ("WolfgangLanger_Pexels.mp4", "single_face.mp4", "woman2.mp4", "test.mp4")


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores ({cpu}), no GPU"


def segments(media: Path, repeat: int, length: float = 3.0) -> pd.DataFrame:
    rows = []
    for name in VIDEOS:
        with av.open(str(media / name)) as c:
            duration = float(c.streams.video[0].duration * c.streams.video[0].time_base)
        for k in range(int(duration // length) or 1):
            rows.append((str(media / name), k * length, min((k + 1) * length, duration)))
    rows = rows * repeat
    df = pd.DataFrame({"id": [f"u{i}" for i in range(len(rows))], "media": [r[0] for r in rows],
                       "start": [r[1] for r in rows], "end": [r[2] for r in rows], "text": "x"})
    return finalize(df, "bench", [], "bench")


def bare_frames(path: str, start: float, end: float, fps: float) -> list[tuple[int, np.ndarray]]:
    """Plain PyAV: decode from the keyframe before ``start``, keep the frame on screen at each instant."""
    targets = list(start + np.arange(int(np.ceil((end - start) * fps - 1e-9))) / fps)
    out, prev = [], None
    with av.open(path) as c:
        s = c.streams.video[0]
        if start > 0:
            c.seek(int(start / s.time_base), stream=s)
        for f in c.decode(s):
            while targets and targets[0] < f.time - 1e-6:
                out.append((round(targets.pop(0) * 1000), np.ascontiguousarray((prev or f).to_ndarray(format="rgb24"))))
            if not targets:
                break
            prev = f
        out += [(round(t * 1000), np.ascontiguousarray(prev.to_ndarray(format="rgb24"))) for t in targets]
    return out


def bare_loop(table: pd.DataFrame, model: str, fps: float) -> tuple[float, int, float]:
    """Seconds, frames, and seconds spent in ``detect_for_video`` alone."""
    opts = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=model), running_mode=vision.RunningMode.VIDEO, num_faces=5,
        output_face_blendshapes=True, output_facial_transformation_matrixes=True)
    frames, inside = 0, 0.0
    t0 = time.perf_counter()
    for path, start, end in zip(table["media"], table["start"], table["end"]):
        with quiet_stderr():  # MediaPipe logs a few lines per landmarker built
            lm = vision.FaceLandmarker.create_from_options(opts)
        with lm:
            for ts, img in bare_frames(path, start, end, fps):
                t = time.perf_counter()
                lm.detect_for_video(mp.Image(image_format=mp.ImageFormat.SRGB, data=img), ts)
                inside += time.perf_counter() - t
                frames += 1
    return time.perf_counter() - t0, frames, inside


def emostore_run(table: pd.DataFrame, enc: FaceLandmarkerEncoder, workers: int, work: Path) -> tuple[float, int]:
    store = Store.create(work / f"s{time.monotonic_ns()}", table, dataset="bench")
    t = time.perf_counter()
    report = run_extraction(store, enc, progress=False, workers=workers)
    elapsed = time.perf_counter() - t
    assert report.complete and report.rows_failed == 0, report.failures[:3]
    frames = sum(len(s) for s in store.feature_set("visual/landmarks").read_sequences())
    return elapsed, frames


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--media", type=Path, default=SHARED / "data" / "face_media")
    ap.add_argument("--face-model", type=Path, default=SHARED / "models" / "face_landmarker.task")
    ap.add_argument("--repeat", type=int, default=8, help="copies of the segment list")
    ap.add_argument("--repeats", type=int, default=3, help="runs per measurement (best counts)")
    ap.add_argument("--fps", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "visual_speed.json")
    args = ap.parse_args()

    table = segments(args.media, args.repeat)
    work = Path(tempfile.mkdtemp(prefix="emostore-vbench-"))
    load = os.getloadavg()[0]
    with FaceLandmarkerEncoder.create(face_model=args.face_model, fps=args.fps) as enc:
        bare_loop(table.iloc[:4], str(args.face_model), args.fps)  # warm up
        bare, ours1, ours2 = [], [], []
        for r in range(args.repeats):
            bare.append(bare_loop(table, str(args.face_model), args.fps))
            ours1.append(emostore_run(table, enc, 1, work))
            ours2.append(emostore_run(table, enc, 2, work))
            print(f"run {r}: bare {bare[-1][0]:.1f} s ({bare[-1][1]} frames), emostore 1 worker "
                  f"{ours1[-1][0]:.1f} s, 2 workers {ours2[-1][0]:.1f} s", flush=True)
    b = min(bare)
    o1, o2 = min(ours1)[0], min(ours2)[0]
    n = b[1]
    assert all(x[1] == n for x in ours1 + ours2), "both sides must see the same frames"
    result = {
        "date": date.today().isoformat(), "machine": machine(), "load_1min_at_start": load,
        "load_1min_at_end": os.getloadavg()[0], "utterances": len(table), "frames": n, "fps": args.fps,
        "bare_s": b[0], "bare_detect_s": b[2], "emostore_1_s": o1, "emostore_2_s": o2,
        "bare_fps": n / b[0], "emostore_1_fps": n / o1, "emostore_2_fps": n / o2,
        "overhead_1": (o1 - b[0]) / b[0], "speedup_2": o1 / o2,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
