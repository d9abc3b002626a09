"""FER2013: face-detection rate on the 48x48 test images, and the feature stores for heads.

1. ``bench/out/fer2013-test``: the test split only, extracted with and without upsampling
   (``visual/landmarks`` at ``--min-size 192``, ``visual/landmarks-raw`` at 0): detection rate
   per setting, overall and per emotion.
2. ``bench/out/fer2013``: train + test (35,733 images) with ``visual/landmarks`` and
   ``visual/fer``, for training heads. The FER CNN was trained on FER2013, so its feature set
   says nothing about generalisation when evaluated on this test split.

Both stores are resumable: run again after an interruption and only pending chunks are done.
Results go to ``bench/out/fer2013.json``. This takes a while (about 36k images at ~15 ms per
image per feature set); run it in the background:

    nohup python bench/fer2013.py --workers 2 > bench/out/fer2013.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import date
from pathlib import Path

import numpy as np

from emostore.extract.encoders.face import visual_encoder
from emostore.extract.runner import run_extraction
from emostore.ingest.run import ingest
from emostore.store import Store, StoreNotFound

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def open_or_ingest(source: Path, out: Path) -> Store:
    try:
        return Store.open(out)
    except StoreNotFound:
        return ingest("images", source, out)[0]


def extract(store: Store, feature_set: str, workers: int, **options: object) -> dict[str, object]:
    t = time.perf_counter()
    with visual_encoder(feature_set, **options) as enc:
        report = run_extraction(store, enc, workers=workers, progress=False)
    elapsed = time.perf_counter() - t
    print(f"{store.path} {report.feature_set}: {report.rows_run} rows in {elapsed:.0f} s "
          f"({report.rows_run / max(elapsed, 1e-9):.1f} rows/s), complete={report.complete}", flush=True)
    return {"feature_set": report.feature_set, "rows_run": report.rows_run, "seconds": elapsed,
            "complete": report.complete}


def detection(store: Store, name: str, split: str | None = None) -> dict[str, object]:
    t = store.table
    _, _, mask = store.read(name)
    rows = np.ones(len(t), bool) if split is None else (t["split"] == split).to_numpy()
    labels = t["emotion"].to_numpy()
    per = {str(e): round(float(mask[rows & (labels == e)].mean()), 4) for e in sorted(set(labels[rows]))}
    return {"rate": round(float(mask[rows].mean()), 4), "detected": int(mask[rows].sum()),
            "images": int(rows.sum()), "per_emotion": per}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fer2013", type=Path, default=SHARED / "data" / "fer2013")
    ap.add_argument("--face-model", type=Path, default=SHARED / "models" / "face_landmarker.task")
    ap.add_argument("--fer-model", type=Path, default=SHARED / "models" / "fer_emotion_model_quantized.tflite")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    models = {"face_model": args.face_model}
    result: dict[str, object] = {"date": date.today().isoformat(), "cpus": os.cpu_count()}

    # 1. detection rate on the test split, with and without upsampling
    test_csv = args.out / "fer2013-test.csv"
    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["path,label,split"] + [f"{p},{p.parent.name},test"
                                    for p in sorted((args.fer2013 / "test").glob("*/*.jpg"))]
    test_csv.write_text("\n".join(lines) + "\n")
    test = open_or_ingest(test_csv, args.out / "fer2013-test")
    runs = [extract(test, "landmarks", args.workers, **models),
            extract(test, "landmarks", args.workers, min_size=0, name="landmarks-raw", **models)]
    result["test_detection"] = {"min_size_192": detection(test, "visual/landmarks"),
                                "min_size_0": detection(test, "visual/landmarks-raw")}
    print(json.dumps(result["test_detection"], indent=2), flush=True)

    # 2. train + test stores for the heads
    full = open_or_ingest(args.fer2013, args.out / "fer2013")
    runs.append(extract(full, "landmarks", args.workers, **models))
    runs.append(extract(full, "fer", args.workers, fer_model=args.fer_model, **models))
    result["runs"] = runs
    result["stores"] = {"test_only": str(test.path), "train_test": str(full.path)}
    result["train_test_detection"] = {s: detection(full, "visual/landmarks", s) for s in ("train", "test")}
    (args.out / "fer2013.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
