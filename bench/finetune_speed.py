"""Speed on one device: minutes per epoch of fine-tuning MiniLM and all-mpnet-base-v2 on MELD
(without context, and with 3 past and 1 future turns), and extraction throughput (utterances/s)
of the base and fine-tuned models in float16 and bfloat16 on CUDA (auto and float32 on a CPU).

The GPU check of issue 9 (goal: at least 10,000 utterances/s for MiniLM extraction on an H100):

    bash bench/finetune_gpu.sh                       # = python bench/finetune_speed.py --device cuda

``--store`` points at another store (the built-in sample for a dry run on a CPU).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
SHARED = ROOT.parent / "shared" / "data"


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU, {torch.get_num_threads()} torch threads"


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def extraction_rate(store_path: Path, options: dict, runtime: dict, repeats: int) -> dict:
    """Best of ``repeats`` full extractions into a fresh feature set (model loading excluded)."""
    import numpy as np

    from emostore.extract.base import build_encoder
    from emostore.extract.runner import run_extraction
    from emostore.store import Store

    store = Store.open(store_path)
    kind = "finetuned" if (Path(options["model"]) / "finetune.json").is_file() else "sentence-transformers"
    times = []
    with build_encoder("text", kind, options, runtime, name="speed") as enc:
        enc.encode_rows(store.table, np.arange(min(256, len(store))))  # warm-up
        for _ in range(repeats):
            sync(runtime["device"])
            t0 = time.perf_counter()
            report = run_extraction(store, enc, overwrite=True, progress=False)
            sync(runtime["device"])
            times.append(time.perf_counter() - t0)
    best = min(times)
    return {"encoder": kind, "model": options["model"], "precision": enc.config.precision,
            "batch_size": runtime["batch_size"], "rows": report.rows_run, "seconds": [round(t, 3) for t in times],
            "utterances_per_s": round(report.rows_run / best, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--store", type=Path, default=None, help="default: MELD from ../shared, ingested once")
    ap.add_argument("--batch-size", type=int, default=1024, help="extraction batch size")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--mpnet", type=Path, default=OUT / "models" / "all-mpnet-base-v2",
                    help="all-mpnet-base-v2 folder (scripts/fetch_mpnet.py); measured too when it is there")
    args = ap.parse_args()

    from emostore.finetune.run import FinetuneOptions, finetune
    from emostore.ingest.run import ingest

    store = args.store or OUT / "meld"
    if not (store / "zarr.json").exists():
        ingest("meld", SHARED / "meld", store)
    result: dict = {"device": args.device, "card": device_name(args.device), "store": str(store), "finetune": [],
                    "extraction": []}
    bases = {"minilm": "minilm", **({"mpnet": str(args.mpnet)} if (args.mpnet / "config.json").is_file() else {})}
    models = {}
    for label, base in bases.items():
        for past, future in ((0, 0), (3, 1)):
            out = OUT / f"speed-ft-{args.device.replace(':', '')}-{label}-p{past}f{future}"
            shutil.rmtree(out, ignore_errors=True)
            meta = finetune(store, out, FinetuneOptions(model=base, epochs=args.epochs, past=past, future=future,
                                                        device=args.device, save_every=0,
                                                        lr=2e-5 if label == "mpnet" else 5e-5), log=print)
            models[(label, past, future)] = out
            result["finetune"].append({"model": label, "past": past, "future": future,
                                       "precision": meta["training"]["precision"],
                                       "minutes_per_epoch": [round(h["train_seconds"] / 60, 2)
                                                             for h in meta["history"]],
                                       "dev": meta["history"][-1].get("dev")})
            print(json.dumps(result["finetune"][-1]), flush=True)
    runtime = {"device": args.device, "batch_size": args.batch_size}
    # half precision on a card; on a CPU, what --precision auto picks (bfloat16 where the CPU has it) and float32
    precisions = ("float16", "bfloat16") if args.device.startswith("cuda") else ("auto", "float32")
    sources = [*bases.values(), *(str(m) for m in models.values())]
    for model in sources:
        for precision in precisions:
            result["extraction"].append(extraction_rate(store, {"model": model, "precision": precision}, runtime,
                                                        args.repeats))
            print(json.dumps(result["extraction"][-1]), flush=True)
    path = OUT / f"finetune_speed_{args.device.replace(':', '')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
