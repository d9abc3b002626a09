"""What the heads benchmarks share: the cached stores, a quiet-machine wait and BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
SHARED = ROOT.parent / "shared" / "data"
SECTION = "## Heads (issue 3)"


def machine() -> str:
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{len(os.sched_getaffinity(0))}-core CPU ({cpu}), {gpu}, torch {torch.__version__}"


def cached_store(adapter: str, source: Path, name: str, contexts: tuple[int, ...]) -> Any:
    """``bench/out/<name>``: ingested once, with text/minilm (and -ctx<k>) extracted once."""
    from emostore.extract.encoders.text import text_encoder
    from emostore.extract.runner import run_extraction
    from emostore.ingest.run import ingest
    from emostore.store import Store

    path = OUT / name
    store = Store.open(path) if (path / "zarr.json").exists() else ingest(adapter, source, path)[0]
    for k in contexts:
        enc = text_encoder("minilm", device="auto", context=k)
        if not (store.has_feature_set(enc.feature_set) and store.feature_set(enc.feature_set).is_complete()):
            run_extraction(store, enc, progress=True)
    return store


def _busy() -> tuple[int, int]:
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(f) - f[3] - f[4], sum(f)


def others_busy(seconds: float = 3.0) -> float:
    """Cores used by other processes, measured while this one sleeps."""
    b0, t0 = _busy()
    time.sleep(seconds)
    b1, t1 = _busy()
    return (os.cpu_count() or 1) * (b1 - b0) / max(t1 - t0, 1)


def wait_quiet(max_busy: float, patience: float) -> float:
    """Wait (at most ``patience`` seconds) until other processes use at most ``max_busy`` cores."""
    deadline = time.time() + patience
    while True:
        busy = others_busy()
        if busy <= max_busy or time.time() > deadline:
            return busy
        print(f"  others use {busy:.2f} cores; waiting", flush=True)
        time.sleep(15)


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, cores other processes used meanwhile)."""
    import resource

    def own() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    b0, t0 = _busy()
    c0, w0 = own(), time.perf_counter()
    result = fn()
    wall, cpu = time.perf_counter() - w0, own() - c0
    b1, t1 = _busy()
    machine_busy = (b1 - b0) / max(t1 - t0, 1) * (os.cpu_count() or 1) * wall
    return result, wall, max(0.0, machine_busy - cpu) / max(wall, 1e-9)


def write_subsection(title: str, text: str) -> None:
    """Replace (or add) ``### title`` inside the heads section of BENCHMARKS.md."""
    path = ROOT / "BENCHMARKS.md"
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    if SECTION not in current:
        current = current.rstrip() + f"\n\n{SECTION}\n"
    start = current.index(SECTION)
    end = current.find("\n## ", start + 1)
    end = len(current) if end < 0 else end + 1
    section = current[start:end]
    head = f"### {title}"
    s = section.find(head)
    if s >= 0:
        e = section.find("\n### ", s + 1)
        section = section[:s] + (section[e + 1:] if e >= 0 else "")
    section = section.rstrip() + "\n\n" + head + "\n\n" + text.strip() + "\n"
    path.write_text(current[:start] + section + ("\n" + current[end:] if current[end:] else ""))


def mean_std(values: list[float]) -> str:
    import numpy as np

    a = np.asarray(values, dtype=float)
    return f"{a.mean():.4f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.4f}"
