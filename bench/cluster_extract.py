"""Text extraction of all of MELD in one process, with ``--workers 2``, and on ``--cluster local:2``;
the same single-process run into an S3 store (moto's server on 127.0.0.1) against a local
directory; a projection to 10 million utterances of text + audio.

Each run's *store overhead* is its wall time minus the wall time of the bare model
(``SentenceTransformer.encode``, model already loaded) on the same texts with the same number of
processes, each encoding its share. Every run must give the same bits as the single-process one.

    python bench/cluster_extract.py [--meld ../shared/data/meld] [--chunk-rows 512] [--write]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import operator
import os
import tempfile
import time
from datetime import date
from pathlib import Path

import benchlib
import numpy as np
import pandas as pd

from emostore.extract.encoders.text import text_encoder
from emostore.extract.runner import run_extraction
from emostore.ingest.run import ingest
from emostore.store import Store

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def _bare_part(texts: list[str], batch_size: int, start: mp.Event, out: mp.Queue, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)  # the cores shared out, as emostore's workers and Dask's do
    enc = text_encoder("minilm", device="cpu", batch_size=batch_size)
    enc.model.encode(texts[:64], batch_size=batch_size)  # warm up
    out.put("ready")
    start.wait()
    t = time.perf_counter()
    enc.model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    out.put(time.perf_counter() - t)


def bare(texts: list[str], processes: int, batch_size: int) -> float:
    """Wall time of ``processes`` processes encoding their share at once (models loaded beforehand)."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    parts = np.array_split(np.arange(len(texts)), processes)
    threads = max(1, (os.cpu_count() or 1) // processes)
    procs = [ctx.Process(target=_bare_part, args=([texts[i] for i in p], batch_size, start, out, threads))
             for p in parts]
    for p in procs:
        p.start()
    for _ in procs:
        assert out.get() == "ready"
    start.set()
    times = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return max(times)


def same(a: Store, b: Store) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a.read("text/minilm"), b.read("text/minilm")))


def per_task_overhead(client, n: int = 2000) -> float:  # type: ignore[no-untyped-def]
    """Seconds per task of the scheduler round trip, with tasks that do nothing."""
    t = time.perf_counter()
    client.gather(client.map(operator.neg, range(n), pure=False))
    return (time.perf_counter() - t) / n


def audio_seconds_per_audio_second(files: list[Path]) -> float:
    """openSMILE eGeMAPS CPU cost per second of audio, one process (Emo-DB clips)."""
    import soundfile as sf

    from emostore.extract.base import build_encoder
    from emostore.ingest.base import finalize

    table = finalize(pd.DataFrame({"id": [f.stem for f in files], "dialogue": "d", "turn": range(len(files)),
                                   "media": [str(f) for f in files]}), "emodb", [], "emodb")
    work = Path(tempfile.mkdtemp(prefix="emostore-bench-audio-"))
    store = Store.create(work / "a", table, dataset="emodb")
    enc = build_encoder("audio", "opensmile", {"feature_set": "egemaps"})
    t = time.perf_counter()
    run_extraction(store, enc, progress=False)
    seconds = time.perf_counter() - t
    return seconds / sum(sf.info(str(f)).duration for f in files)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meld", type=Path, default=SHARED / "meld")
    ap.add_argument("--chunk-rows", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    args = ap.parse_args()
    import distributed

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    load_before = load()
    work = Path(tempfile.mkdtemp(prefix="emostore-bench-cluster-"))
    template, _ = ingest("meld", args.meld, work / "template")
    texts = template.table["text"].tolist()
    n, chunk = len(texts), args.chunk_rows
    enc = text_encoder("minilm", device="cpu", batch_size=args.batch_size)
    enc.model.encode(texts[:256], batch_size=args.batch_size)  # warm up

    rows = {}
    bare1 = bare(texts, 1, args.batch_size)
    bare2 = bare(texts, 2, args.batch_size)
    print(f"bare: 1 process {bare1:.1f} s, 2 processes {bare2:.1f} s", flush=True)

    one, _ = ingest("meld", args.meld, work / "one")
    t = time.perf_counter()
    r1 = run_extraction(one, enc, chunk_rows=chunk, progress=False)
    rows["1 process"] = (time.perf_counter() - t, bare1, r1)

    two, _ = ingest("meld", args.meld, work / "two")
    t = time.perf_counter()
    r2 = run_extraction(two, enc, chunk_rows=chunk, progress=False, workers=2)
    rows["`--workers 2`"] = (
        time.perf_counter() - t, bare2, r2)

    cl, _ = ingest("meld", args.meld, work / "cluster")
    t = time.perf_counter()
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       silence_logs=logging.ERROR, dashboard_address=":0")
    client = distributed.Client(cluster)
    started = time.perf_counter() - t
    t = time.perf_counter()
    r3 = run_extraction(cl, enc, chunk_rows=chunk, progress=False, cluster=client)
    rows["`--cluster local:2`"] = (started + time.perf_counter() - t, bare2, r3)
    task_overhead = per_task_overhead(client)
    client.close()
    cluster.close()
    for name, (wall, _, rep) in rows.items():
        print(f"{name}: {wall:.1f} s, encode {rep.encode_seconds:.1f} s, write {rep.write_seconds:.2f} s", flush=True)
    equal = {"`--workers 2`": same(one, two), "`--cluster local:2`": same(one, cl)}

    # object storage: the single-process run into moto's S3 on loopback, against the local run
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_EC2_METADATA_DISABLED="true")
    import fsspec

    fsspec.filesystem("s3").mkdir("bench")
    s3, _ = ingest("meld", args.meld, "s3://bench/meld")
    t = time.perf_counter()
    r4 = run_extraction(s3, enc, chunk_rows=chunk, progress=False)
    s3_wall = time.perf_counter() - t
    objects = len(fsspec.filesystem("s3").find("bench/meld/features/text/minilm"))
    equal["1 process into `s3://`"] = same(one, Store.open("s3://bench/meld"))
    server.stop()

    emodb = sorted((SHARED / "emodb" / "wav").glob("*.wav"))[:80]
    audio_cost = audio_seconds_per_audio_second(emodb) if emodb else None
    meld_csv = pd.concat([pd.read_csv(p) for p in sorted(args.meld.glob("*_sent_emo.csv"))])
    durations = (pd.to_timedelta(meld_csv["EndTime"].str.replace(",", ".")) -
                 pd.to_timedelta(meld_csv["StartTime"].str.replace(",", "."))).dt.total_seconds()
    mean_duration = float(durations[(durations > 0) & (durations < 60)].mean())
    load_after = load()

    # ----- the report ----------------------------------------------------------------------------
    wall1 = rows["1 process"][0]
    text_rate = n / (r3.encode_seconds + r3.write_seconds)  # rows per second per worker process
    lines = [
        "## Many machines: extraction on a cluster and on object storage (issue 11)",
        "",
        (f"Date {date.today().isoformat()}; machine: {benchlib.machine()}, no GPU; shared with other work: load "
        f"average {load_before} before, {load_after} after (1/5/15 min). "
        f"`python bench/cluster_extract.py --chunk-rows {chunk}`: all {n:,} MELD utterances, bundled "
        f"all-MiniLM-L6-v2, batch size {args.batch_size}, {chunk} rows per chunk ({r1.chunks_total} chunks, so "
        f"{r1.chunks_total} tasks). Store overhead: wall time minus the bare model's wall time with as many "
        "processes (each encoding its share, model loaded beforehand). Same bits as the 1-process run: "
        + ", ".join(f"{name} **{'yes' if ok else 'no'}**" for name, ok in equal.items()) + "."),
        "",
        "| run | wall time | utterances/s | bare model, same processes | store overhead |",
        "|---|---|---|---|---|",
    ]
    for name, (wall, ref, _) in rows.items():
        lines.append(f"| {name} | {wall:.1f} s | {n / wall:.0f} | {ref:.1f} s | {wall - ref:+.1f} s "
                     f"({100 * (wall - ref) / wall:+.0f}%) |")
    lines += [
        (f"| 1 process into `s3://` (moto on 127.0.0.1) | {s3_wall:.1f} s | {n / s3_wall:.0f} | {bare1:.1f} s "
        f"| {s3_wall - bare1:+.1f} s ({100 * (s3_wall - bare1) / s3_wall:+.0f}%) |"),
        "",
        (f"- Inside the runs (summed over processes): 1 process encoded for {r1.encode_seconds:.1f} s and wrote "
        f"for {r1.write_seconds:.2f} s; on the cluster the workers encoded for {r3.encode_seconds:.1f} s and wrote "
        f"for {r3.write_seconds:.2f} s. `--workers 2` and the cluster include starting 2 processes and loading "
        f"the model in each; the cluster also starts its scheduler ({started:.1f} s for LocalCluster with 2 "
        f"workers)."),
        (f"- Object store against a local directory, same 1-process run: {s3_wall:.1f} s against {wall1:.1f} s "
        f"(**{s3_wall - wall1:+.1f} s, {100 * (s3_wall - wall1) / wall1:+.0f}%**); the feature set is {objects} "
        f"objects, one PUT each ({r4.chunks_run} chunks x values, mask, error, done, plus metadata)."),
        (f"- Scheduler round trip per task (2,000 tasks that do nothing, 2 workers): "
        f"**{1000 * task_overhead:.2f} ms**; a {chunk}-row text chunk takes "
        f"{(r3.encode_seconds + r3.write_seconds) / r3.chunks_run:.2f} s on one worker."),
        "",
        "### On paper: 10 million utterances of text + audio",
        "",
        (f"- Text, measured: one worker process (1 BLAS thread) does {text_rate:.0f} utterances/s on this CPU "
        f"(encode and write). 10M utterances: {1e7 / text_rate / 3600:.0f} worker-hours."),
    ]
    if audio_cost is not None:
        audio_worker_s = audio_cost * mean_duration
        total = 1e7 * (1 / text_rate + audio_worker_s)
        lines += [
            (f"- Audio, measured: openSMILE eGeMAPS costs {audio_cost:.3f} s per second of audio in one process "
            f"(80 Emo-DB files); MELD utterances last {mean_duration:.1f} s on average, so {audio_worker_s:.3f} s "
            f"each: 10M utterances take {1e7 * audio_worker_s / 3600:.0f} worker-hours."),
            (f"- Together {total / 3600:.0f} worker-hours: **{total / 3600 / 24:.0f} workers finish in 24 h, "
            f"{total / 3600 / 8:.0f} in 8 h** (one worker per core; audio dominates). No GPU was available: on "
            "a GPU worker (dask-cuda, one per card) the text share shrinks by the card's speed-up over these "
            "CPU cores, the openSMILE share does not (it is CPU code)."),
        ]
    tasks_10m = 1e7 / chunk
    lines += [
        "- Scaling limits seen:",
        (f"  - Scheduler: {1000 * task_overhead:.2f} ms per task; with {chunk}-row chunks 10M utterances are "
        f"{tasks_10m:,.0f} tasks per feature set, {tasks_10m * task_overhead:.0f} s of scheduler time, "
        "negligible beside the work. Dask's scheduler handles about a few thousand tasks/s, so it becomes the "
        "limit only near a thousand workers with chunks this small; larger chunks (4,096 rows) divide "
        "its load by 8 but lose more work when a worker dies."),
        (f"  - Chunk size: a chunk is the unit of retry and of writing. At {chunk} rows a text chunk is about "
        f"{(r3.encode_seconds + r3.write_seconds) / r3.chunks_run:.1f} s of work here; audio chunks of 256 rows "
        f"are about {256 * (audio_cost or 0) * mean_duration:.0f} s. Fewer chunks than workers leaves workers "
        "idle: a store of N rows keeps at most N / chunk_rows workers busy."),
        (f"  - Object store: 4 PUTs per chunk (values, mask, error, done; 5 with frame sequences) and one GET per "
        f"`done` chunk when a run starts. 10M rows in {chunk}-row chunks: {4 * tasks_10m:,.0f} PUTs per feature set; "
        f"at {text_rate:.0f} rows/s per worker, 100 workers issue {100 * 4 * text_rate / chunk:.0f} PUT/s, far below "
        "S3's 3,500 PUT/s per prefix. moto runs inside the benchmark's own process (it shares the GIL with "
        "the run), so its overhead above is an upper bound for a local S3-compatible server."),
        ("  - Each worker reads the utterance table once (all rows, for context encoders): at 10M rows that is "
        "about 1-2 GB of Python objects per worker, the first memory limit to watch."),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        benchlib.write_section(lines[0], text)


if __name__ == "__main__":
    main()
