"""Latency and throughput of `emostore serve` on loopback, 1 and 4 clients, with and without batching.

Builds the sample store (text + eGeMAPS audio from its speech clips), trains an ``mlp`` on both,
then starts `emostore serve` on 127.0.0.1 once per configuration: micro-batching off
(``--max-batch 1``: inference still off the event loop, one request per pass), batching with the
defaults, and, with ``--compare-with DIR``, the server of another checkout (e.g. the code before
batching) under the same load. Each client keeps one connection and sends its requests one after
another: text only, and text + a 3-second wav. The direct call is ``Predictor.predict`` in one
process, the same work without HTTP. Writes a section of BENCHMARKS.md with ``--write``.

    python bench/serve_latency.py [--requests 200] [--compare-with /path/to/other/checkout] [--write]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import date
from pathlib import Path

import benchlib
import numpy as np
from servelib import TEXTS, Server, build, closed_loop, uptime

#: The direct calls run as `emostore serve` runs them: OpenMP threads sleep while they wait (set before
#: PyTorch loads). The server of another checkout (--compare-with) gets the environment it would have.
OWN_POLICY = "OMP_WAIT_POLICY" not in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
SECTION = "## Serving: latency, 1 and 4 clients (issue 12)"
TARGET_RATIO, TARGET_RPS = 2.0, 38.0  # 4-client text p50 <= 2x 1-client p50; >= 2x the 19 requests/s before


def direct(ckpt: Path, wav: Path, n: int) -> dict[str, float]:
    from emostore.serve.predictor import Predictor

    pred = Predictor(ckpt, device="cpu")
    pred.load_encoders()
    out = {}
    for label, kwargs in (("text", {}), ("text + 3 s wav", {"audio": wav})):
        for i in range(3):
            pred.predict(text=TEXTS[i], **kwargs)
        lat = []
        for i in range(n):
            t = time.perf_counter()
            pred.predict(text=TEXTS[i % len(TEXTS)], **kwargs)
            lat.append(time.perf_counter() - t)
        out[label] = 1000 * float(np.median(lat))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200, help="requests per client count and kind")
    ap.add_argument("--compare-with", type=Path, default=None, help="another checkout whose server to measure too")
    ap.add_argument("--batch-wait-ms", type=float, default=None, help="passed to the batching server")
    ap.add_argument("--max-batch", type=int, default=None, help="passed to the batching server")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    load_before = uptime()
    work = Path(tempfile.mkdtemp(prefix="emostore-serve-bench-"))
    ckpt, wav = build(work)
    wav_bytes = wav.read_bytes()
    base = direct(ckpt, wav, min(args.requests, 100))
    batching = [*(["--batch-wait-ms", str(args.batch_wait_ms)] if args.batch_wait_ms is not None else []),
                *(["--max-batch", str(args.max_batch)] if args.max_batch is not None else [])]
    configs = [("batching off (`--max-batch 1`)", ["--max-batch", "1"], None),
               (f"batching (`{' '.join(batching) or 'defaults'}`)", batching, None)]
    if args.compare_with:
        configs.insert(0, (f"before: {args.compare_with.name} checkout", [], args.compare_with))
    rows = ["| server | request | clients | p50 | p95 | p99 | requests/s | direct call p50 |",
            "|---|---|---|---|---|---|---|---|"]
    summary = {}
    for name, flags, source in configs:
        with Server(ckpt, *flags, source=source, drop_env=("OMP_WAIT_POLICY",) if source and OWN_POLICY else ()) \
                as server:
            for kind in ("text", "text + 3 s wav"):
                for clients in (1, 4):
                    r = closed_loop(server.url, clients, [kind], wav_bytes, requests=args.requests)
                    assert not r["errors"], r["errors"][:3]
                    k = r["kinds"][kind]
                    summary[(name, kind, clients)] = k
                    rows.append(f"| {name} | {kind} | {clients} | {k['p50']:.1f} ms | {k['p95']:.1f} ms | "
                                f"{k['p99']:.1f} ms | {k['rps']:.1f} | {base[kind]:.1f} ms |")
                    print(rows[-1], flush=True)
    name = configs[-1][0]
    one, four = summary[(name, "text", 1)], summary[(name, "text", 4)]
    ratio = four["p50"] / one["p50"]
    load_after = uptime()
    text = "\n".join([
        SECTION, "",
        (f"Date {date.today().isoformat()}; machine: {benchlib.machine()}, no GPU; shared with other jobs "
        f"({load_before} before, {load_after} after). `python bench/serve_latency.py --requests {args.requests}"
        f"{' --compare-with ' + str(args.compare_with) if args.compare_with else ''}`: an `mlp` checkpoint on "
        "text/minilm + audio/egemaps of the sample, `emostore serve` (one process) on 127.0.0.1; each client keeps "
        f"one connection and sends its requests one after another; each row is {args.requests} requests, all "
        "clients together."), "", *rows, "",
        (f"- Target: with 4 clients, text p50 <= {TARGET_RATIO:g}x the 1-client p50: **{ratio:.2f}x "
        f"({four['p50']:.1f} / {one['p50']:.1f} ms), {'met' if ratio <= TARGET_RATIO else 'missed'}**."),
        (f"- Target: text throughput with 4 clients >= {TARGET_RPS:g} requests/s (2x the 19 before): "
        f"**{four['rps']:.1f}, {'met' if four['rps'] >= TARGET_RPS else 'missed'}**."), ""])
    print(text)
    if args.write:
        benchlib.write_section(SECTION, text)


if __name__ == "__main__":
    main()
