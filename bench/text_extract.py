"""Text extraction throughput on all of MELD: emostore against a bare ``SentenceTransformer.encode``.

Same model (bundled all-MiniLM-L6-v2), same texts, same batch size, same process; each side
runs ``--repeats`` times, alternating, and the best time counts. Writes a section of
BENCHMARKS.md (``--write``) with the machine and the date.

    python bench/text_extract.py [--meld ../shared/data/meld] [--batch-size 64] [--repeats 2] [--write]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import date
from pathlib import Path

import benchlib
import torch

from emostore.extract.encoders.text import SentenceTransformerEncoder, text_encoder
from emostore.extract.runner import run_extraction
from emostore.ingest.run import ingest

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{benchlib.machine()}, {gpu}, torch {torch.__version__} with {torch.get_num_threads()} threads"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meld", type=Path, default=ROOT.parent / "shared" / "data" / "meld")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="emostore-bench-"))
    store, _ = ingest("meld", args.meld, work / "template")
    texts = store.table["text"].tolist()
    enc = text_encoder("minilm", device="cpu", batch_size=args.batch_size)
    model = enc.model
    model.encode(texts[:256], batch_size=args.batch_size)  # warm up

    # time spent inside the model, to separate the store's own overhead
    inside = [0.0]
    original = SentenceTransformerEncoder._encode_texts

    def timed(self, batch):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        out = original(self, batch)
        inside[0] += time.perf_counter() - t
        return out

    SentenceTransformerEncoder._encode_texts = timed  # type: ignore[method-assign]
    bare, ours, model_time, distinct = [], [], [], 0
    for r in range(args.repeats):
        t = time.perf_counter()
        model.encode(texts, batch_size=args.batch_size, convert_to_numpy=True, show_progress_bar=False)
        bare.append(time.perf_counter() - t)
        st, _ = ingest("meld", args.meld, work / f"run{r}")
        inside[0] = 0.0
        t = time.perf_counter()
        report = run_extraction(st, enc, progress=False)
        ours.append(time.perf_counter() - t)
        model_time.append(inside[0])
        assert report.complete and report.rows_run == len(texts)
        fs = st.feature_set("text/minilm")
        distinct = sum(len({texts[i] for i in range(fs.chunk_slice(c).start, fs.chunk_slice(c).stop)})
                       for c in range(fs.n_chunks))
        print(f"repeat {r}: bare {bare[-1]:.2f} s, emostore {ours[-1]:.2f} s (model {inside[0]:.2f} s)")
    b, o = min(bare), min(ours)
    k = ours.index(o)
    overhead = (o - model_time[k]) / o
    n = len(texts)
    lines = [
        "## Text extraction, MELD (issue 2)",
        "",
        f"Date {date.today().isoformat()}; machine: {machine()}.",
        f"`python bench/text_extract.py --batch-size {args.batch_size} --repeats {args.repeats}`: all {n:,} MELD "
        f"utterances, bundled all-MiniLM-L6-v2, batch size {args.batch_size}, best of {args.repeats} alternating runs.",
        "",
        "| | wall time | utterances/s |",
        "|---|---|---|",
        f"| bare `SentenceTransformer.encode` (all {n:,} texts) | {b:.2f} s | {n / b:.0f} |",
        f"| `emostore extract text` into a new store ({distinct:,} distinct texts per chunk encoded) "
        f"| {o:.2f} s | {n / o:.0f} |",
        "",
        f"- emostore / bare throughput ratio: **{b / o:.3f}** (above 1: emostore is faster).",
        f"- Store overhead (time outside the model: table read, deduplication, Zarr writes): "
        f"{o - model_time[k]:.2f} s, **{100 * overhead:.1f}%** of the emostore run.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        benchlib.write_section(lines[0], text)

if __name__ == "__main__":
    main()
