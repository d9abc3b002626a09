"""Latency and throughput of `emostore serve` on loopback against calling the Predictor directly.

Builds the sample store (text + eGeMAPS audio from its speech clips), trains an ``mlp`` on both,
starts ``emostore serve`` on 127.0.0.1, and sends text-only requests and text + a 3-second wav,
with 1 and 4 concurrent clients. Writes a section of BENCHMARKS.md with ``--write``.

    python bench/serve_latency.py [--requests 100] [--write]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import httpx
import benchlib
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["I can't believe you did that!", "Okay, see you tomorrow then.", "This is the worst day of my life.",
         "We won! We actually won!", "Please don't leave me here alone."]


def build(work: Path) -> tuple[Path, Path]:
    from emostore.demo import sample_with_media
    from emostore.extract.encoders.opensmile import OpenSmileEncoder
    from emostore.extract.runner import run_extraction
    from emostore.extract.encoders.text import text_encoder
    from emostore.heads.run import train

    from emostore.ingest.run import ingest

    store, _ = ingest("csv", [sample_with_media(work)], work / "store", dataset="sample")
    run_extraction(store, text_encoder("minilm", device="cpu"), progress=False)
    run_extraction(store, OpenSmileEncoder.create(feature_set="egemaps"), progress=False)
    _, ckpt = train(store.path, ["text/minilm", "audio/egemaps"], "mlp", work / "ckpt")
    signal, rate = sf.read(str(ROOT / "emostore" / "sample" / "media" / "d001_u00.flac"), dtype="float32")
    wav = work / "three_seconds.wav"
    sf.write(str(wav), np.resize(signal, 3 * rate), rate)  # exactly 3.0 s
    return ckpt, wav


def stats(latencies: list[float], wall: float) -> tuple[float, float, float]:
    ms = np.asarray(latencies) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), len(latencies) / wall


def run_clients(url: str, clients: int, n: int, wav: Path | None) -> tuple[float, float, float]:
    payload = wav.read_bytes() if wav else None

    def one(i: int) -> float:
        with httpx.Client(timeout=60) as client:
            t = time.perf_counter()
            if payload is None:
                r = client.post(f"{url}/predict", json={"text": TEXTS[i % len(TEXTS)]})
            else:
                r = client.post(f"{url}/predict", data={"text": TEXTS[i % len(TEXTS)]},
                                files={"file": ("clip.wav", payload, "audio/wav")})
            r.raise_for_status()
            return time.perf_counter() - t

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(min(n, 5))))  # warm up
        t = time.perf_counter()
        lat = list(pool.map(one, range(n)))
        wall = time.perf_counter() - t
    return stats(lat, wall)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="emostore-serve-bench-"))
    ckpt, wav = build(work)

    from emostore.serve.predictor import Predictor

    pred = Predictor(ckpt, device="cpu")
    pred.load_encoders()
    direct = {}
    for label, kwargs in (("text", {}), ("text + 3 s wav", {"audio": wav})):
        for i in range(3):
            pred.predict(text=TEXTS[i], **kwargs)
        lat = []
        t = time.perf_counter()
        for i in range(args.requests):
            s = time.perf_counter()
            pred.predict(text=TEXTS[i % len(TEXTS)], **kwargs)
            lat.append(time.perf_counter() - s)
        direct[label] = stats(lat, time.perf_counter() - t)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "emostore.cli", "serve", str(ckpt), "--port", str(port),
                               "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ})
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        rows = ["| request | clients | p50 | p95 | requests/s | direct call p50 (1 process) | p50 minus direct (HTTP + queueing) |",
                "|---|---|---|---|---|---|---|"]
        for label, file in (("text", None), ("text + 3 s wav", wav)):
            for clients in (1, 4):
                p50, p95, rps = run_clients(url, clients, args.requests, file)
                d50 = direct[label][0]
                rows.append(f"| {label} | {clients} | {p50:.1f} ms | {p95:.1f} ms | {rps:.1f} | {d50:.1f} ms | "
                            f"{p50 - d50:+.1f} ms |")
                print(rows[-1], flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = "\n".join([
        "## Serving (issue 6)", "",
        f"Date {date.today().isoformat()}; machine: {benchlib.machine()}, no GPU. "
        f"`python bench/serve_latency.py --requests {args.requests}`: an `mlp` checkpoint on text/minilm + "
        "audio/egemaps of the sample, `emostore serve` (uvicorn, one process) on 127.0.0.1; each client sends "
        "its requests one after another; requests run one at a time inside the server (encoders are not "
        "shared across threads), so 4 clients queue. The direct call is `Predictor.predict` in one process "
        "(encoding + head), the same work without HTTP.", "", *rows, ""])
    print(text)
    if args.write:
        benchlib.write_section("## Serving (issue 6)", text)

if __name__ == "__main__":
    main()
