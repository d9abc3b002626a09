"""A bounded load test of `emostore serve` on loopback: N clients for a fixed time, a mix of requests.

Builds the sample store (text + eGeMAPS audio from its speech clips) and trains an ``mlp`` on both,
starts `emostore serve` on 127.0.0.1, and runs ``--clients`` clients for ``--seconds``: each keeps
one connection and sends one request after another, in turn text only, text + a 3-second wav,
and a conversation turn (each client talks in its own conversation, 10 turns, then a new one).
Reports throughput, p50/p95/p99 per kind, the errors (there must be none), /health latency
while the load runs, and the server's resident memory (all its processes) every few seconds:
it must not grow without bound. Exits non-zero on an error or on memory growth. Writes a section
of BENCHMARKS.md with ``--write``.

    python bench/serve_load.py [--clients 8] [--seconds 60] [--workers 1] [--write]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import benchlib
import httpx
from servelib import Server, build, closed_loop, percentiles, uptime

SECTION = "## Serving: load test (issue 12)"
KINDS = ["text", "text + 3 s wav", "conversation turn"]
#: Memory may settle after warm-up (allocator pools, caches): growth over the second half of the run must stay
#: below this.
MAX_GROWTH_MB = 50.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--extra", default="", help="more `emostore serve` options, e.g. '--batch-wait-ms 5'")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    load_before = uptime()
    work = Path(tempfile.mkdtemp(prefix="emostore-serve-load-"))
    ckpt, wav = build(work)
    flags = ["--workers", str(args.workers), *args.extra.split()]
    with Server(ckpt, *flags) as server:
        closed_loop(server.url, args.clients, KINDS, wav.read_bytes(), requests=3 * args.clients)  # warm up
        rss: list[tuple[float, float]] = [(0.0, server.rss_mb())]
        health: list[float] = []
        stop = threading.Event()

        def watch() -> None:
            t0 = time.perf_counter()
            with httpx.Client(timeout=30) as client:
                while not stop.wait(0.25):
                    t = time.perf_counter()
                    client.get(f"{server.url}/health").raise_for_status()
                    health.append(time.perf_counter() - t)
                    if len(health) % 20 == 0:
                        rss.append((time.perf_counter() - t0, server.rss_mb()))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        result = closed_loop(server.url, args.clients, KINDS, wav.read_bytes(), seconds=args.seconds, warmup=0)
        stop.set()
        watcher.join()
        rss.append((result["wall"], server.rss_mb()))
        stats = httpx.get(f"{server.url}/health").json()
    load_after = uptime()
    half = [m for t, m in rss if t >= result["wall"] / 2]
    growth = max(half) - min(half) if half else 0.0
    rows = ["| request | requests | requests/s | p50 | p95 | p99 |", "|---|---|---|---|---|---|"]
    for kind, k in result["kinds"].items():
        rows.append(f"| {kind} | {k['n']} | {k['rps']:.1f} | {k['p50']:.0f} ms | {k['p95']:.0f} ms | "
                    f"{k['p99']:.0f} ms |")
    total = sum(k["n"] for k in result["kinds"].values())
    h = percentiles(health)
    errors = result["errors"]
    text = "\n".join([
        SECTION, "",
        (f"Date {date.today().isoformat()}; machine: {benchlib.machine()}, no GPU; shared with other jobs "
         f"({load_before} before, {load_after} after). `python bench/serve_load.py --clients {args.clients} "
         f"--seconds {args.seconds:g} --workers {args.workers}{' --extra ' + repr(args.extra) if args.extra else ''}`"
         f": `emostore serve` with an `mlp` on text/minilm + audio/egemaps, {args.clients} clients on loopback for "
         f"{result['wall']:.0f} s, each sending text, text + 3 s wav and conversation turns in turn."), "",
        *rows, "",
        (f"- All requests: {total} in {result['wall']:.1f} s, {total / result['wall']:.1f} requests/s; "
        f"**errors: {len(errors)}** (target 0: {'met' if not errors else 'missed'})."),
        (f"- /health during the load (every 0.25 s, {len(health)} calls): p50 {h['p50']:.1f} ms, p99 {h['p99']:.1f} ms "
        f"(target < 50 ms: {'met' if h['p50'] < 50 else 'missed'} at p50)."),
        (f"- Batches: {b['batches']} (mean of the last 1000: {b['mean_recent']} requests, largest {b['largest']})."
         if (b := stats.get("batching")) else "- Batches: counted inside each worker process."),
        (f"- Server memory (RSS, all its processes): {rss[0][1]:.0f} MB after warm-up, {rss[-1][1]:.0f} MB at the end, "
        f"largest {max(m for _, m in rss):.0f} MB; growth over the second half of the run {growth:.0f} MB "
        f"(bound {MAX_GROWTH_MB:g} MB: {'met' if growth <= MAX_GROWTH_MB else 'missed'})."),
        f"- RSS samples (s, MB): {', '.join(f'{t:.0f}: {m:.0f}' for t, m in rss)}.", ""])
    print(text)
    for e in errors[:10]:
        print("error:", e, file=sys.stderr)
    if args.write:
        benchlib.write_section(SECTION, text)
    if errors or growth > MAX_GROWTH_MB:
        sys.exit(1)


if __name__ == "__main__":
    main()
