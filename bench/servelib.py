"""What the serving benchmarks share: the checkpoint they serve, starting `emostore serve`, clients, RSS."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Self

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["I can't believe you did that!", "Okay, see you tomorrow then.", "This is the worst day of my life.",
         "We won! We actually won!", "Please don't leave me here alone."]


def uptime() -> str:
    """The load averages, as `uptime` prints them."""
    try:
        return "load average " + ", ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip()


def build(work: Path) -> tuple[Path, Path]:
    """An ``mlp`` on text/minilm + audio/egemaps of the sample (with its speech clips) and a 3.0 s wav."""
    import soundfile as sf

    from emostore.extract.encoders.opensmile import OpenSmileEncoder
    from emostore.extract.encoders.text import text_encoder
    from emostore.extract.runner import run_extraction
    from emostore.heads.run import train
    from emostore.ingest.run import ingest
    from emostore.ingest.sample import SAMPLE

    store, _ = ingest("sample", SAMPLE, work / "store", clips=work / "media")
    run_extraction(store, text_encoder("minilm", device="cpu"), progress=False)
    run_extraction(store, OpenSmileEncoder.create(feature_set="egemaps"), progress=False)
    _, ckpt = train(store.path, ["text/minilm", "audio/egemaps"], "mlp", work / "ckpt")
    signal, rate = sf.read(str(ROOT / "emostore" / "sample" / "media" / "d001_u00.flac"), dtype="float32")
    wav = work / "three_seconds.wav"
    sf.write(str(wav), np.resize(signal, 3 * rate), rate)  # exactly 3.0 s
    return ckpt, wav


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`emostore serve CKPT ...` in a subprocess on a free loopback port (``source``: another checkout's code)."""

    def __init__(self, ckpt: Path, *args: str, source: Path | None = None, drop_env: tuple[str, ...] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**{k: v for k, v in os.environ.items() if k not in drop_env}, "PYTHONPATH": str(source or ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "emostore.cli", "serve", str(ckpt), "--port",
                                      str(self.port), "--device", "cpu", *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                     cwd=str(source or ROOT))
        for _ in range(3000):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)

    def rss_mb(self) -> float:
        """Resident memory of the server and its worker processes, in MB."""
        import psutil

        p = psutil.Process(self.proc.pid)
        procs = [p, *[c for c in p.children(recursive=True) if "resource_tracker" not in " ".join(c.cmdline())]]
        return sum(c.memory_info().rss for c in procs) / 2**20

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def percentiles(latencies: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    return {f"p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)}


def post(client: httpx.Client, url: str, kind: str, i: int, wav: bytes | None, conversation: str | None = None,
         turn: int = 0) -> httpx.Response:
    text = TEXTS[i % len(TEXTS)]
    if kind == "text":
        return client.post(f"{url}/predict", json={"text": text})
    if kind == "text + 3 s wav":
        return client.post(f"{url}/predict", data={"text": text}, files={"file": ("clip.wav", wav, "audio/wav")})
    if kind == "conversation turn":
        return client.post(f"{url}/conversations/{conversation}/turns",
                           json={"text": text, "speaker": "AB"[turn % 2]})
    raise ValueError(kind)


def closed_loop(url: str, clients: int, kinds: list[str], wav: bytes | None, *, requests: int | None = None,
                seconds: float | None = None, warmup: int = 3) -> dict[str, Any]:
    """``clients`` threads, each with its own keep-alive connection, send one request after another
    (client c's j-th request is of kind ``kinds[(c + j) % len(kinds)]``) until ``requests`` in all or
    ``seconds`` have passed. Latency is measured per request, from send to the parsed answer."""
    lat: dict[str, list[float]] = {k: [] for k in kinds}
    errors: list[str] = []
    count = [0]
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client_loop(c: int) -> None:
        with httpx.Client(timeout=120) as client:
            turn, conv = 0, f"client{c}-0"
            for w in range(warmup):
                post(client, url, kinds[w % len(kinds)], w, wav, conv, turn)
            client.delete(f"{url}/conversations/{conv}")
            start.wait()
            j = 0
            while True:
                with lock:
                    if (requests is not None and count[0] >= requests) or (
                            seconds is not None and time.perf_counter() - t0[0] >= seconds):
                        return
                    count[0] += 1
                kind, i = kinds[(c + j) % len(kinds)], c + j
                j += 1
                t = time.perf_counter()
                try:
                    r = post(client, url, kind, i, wav, conv, turn)
                    ok = r.status_code == 200
                    why = f"{kind}: HTTP {r.status_code} {r.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, why = False, f"{kind}: {type(exc).__name__} {exc}"
                dt = time.perf_counter() - t
                with lock:
                    (lat[kind].append(dt) if ok else errors.append(why))
                if kind == "conversation turn":
                    turn += 1
                    if turn == 10:  # a conversation of 10 turns, then the next one
                        client.delete(f"{url}/conversations/{conv}")
                        turn, conv = 0, f"client{c}-{j}"

    t0 = [0.0]
    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0[0] = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0[0]
    return {"wall": wall, "errors": errors,
            "kinds": {k: {"n": len(v), "rps": len(v) / wall, **percentiles(v)} for k, v in lat.items()}}
