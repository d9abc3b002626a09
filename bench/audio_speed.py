"""Audio extraction throughput on all of Emo-DB: emostore against a bare openSMILE loop.

Both sides compute eGeMAPSv02 functionals at 16 kHz (openSMILE resamples the 22,050 Hz files
itself in the bare loop, ``Smile(..., sampling_rate=16000, resample=True).process_file``).
Measured in turn in each of ``--repeats`` repeats (ratios are taken within a repeat, so that
slow and fast spells of a shared machine do not mix), each in this process after imports:

* the bare loop over the files, and the same loop over 2 spawned processes (a reference for
  what the machine gives);
* ``run_extraction`` (what ``emostore extract audio --feature-set egemaps`` runs) with 1 and 2
  workers, into a fresh feature set each time;
* the command line itself end to end (Python start-up and imports included).

The machine is shared, so before every run the script waits until other processes use less
than ``--max-busy`` cores (measured from /proc/stat over 3 s while this script sleeps), and it
records what others used during each run. Writes a section of BENCHMARKS.md (``--write``).

    python bench/audio_speed.py [--emodb ../shared/data/emodb] [--repeats 5] [--write]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import opensmile

import emostore.extract.encoders.opensmile as audio
from emostore.extract.encoders.opensmile import OpenSmileEncoder
from emostore.extract.runner import run_extraction
from emostore.ingest.run import ingest

ROOT = Path(__file__).resolve().parents[1]
TITLE = "## Audio extraction speed (issue 4)"


def machine() -> str:
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores (`nproc` {len(os.sched_getaffinity(0))}), {cpu}"


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


def own_cpu() -> float:
    """CPU seconds used by this process and its finished children."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def others_busy(seconds: float = 3.0) -> float:
    """Cores used by other processes, measured while this one sleeps."""
    b0, t0 = busy_jiffies()
    time.sleep(seconds)
    b1, t1 = busy_jiffies()
    return (os.cpu_count() or 1) * (b1 - b0) / max(t1 - t0, 1)


def wait_quiet(max_busy: float, deadline: float) -> float:
    """Wait until others use at most ``max_busy`` cores, or until ``deadline`` (a time.time())."""
    while True:
        busy = others_busy()
        if busy <= max_busy or time.time() > deadline:
            return busy
        print(f"  others use {busy:.2f} cores; waiting", flush=True)
        time.sleep(20)


def measure(fn: Callable[[], None]) -> tuple[float, float, float]:
    """(wall seconds, cores other processes used meanwhile, CPU seconds of ours)."""
    b0, _ = busy_jiffies()
    c0 = own_cpu()
    w0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - w0
    deadline = time.time() + 10
    while mp.active_children() and time.time() < deadline:  # reap workers, so their CPU counts as ours
        time.sleep(0.05)
    elapsed = time.perf_counter() - w0
    b1, _ = busy_jiffies()
    ours = own_cpu() - c0
    others = max(0.0, (b1 - b0) / os.sysconf("SC_CLK_TCK") - ours) / elapsed
    return wall, others, ours


@dataclass
class Run:
    wall: float
    others: float
    cpu: float
    before: float


_SMILE: opensmile.Smile | None = None


def _smile() -> opensmile.Smile:
    return opensmile.Smile(opensmile.FeatureSet.eGeMAPSv02, opensmile.FeatureLevel.Functionals,
                           sampling_rate=16000, resample=True)


def _init() -> None:
    global _SMILE
    _SMILE = _smile()


def _one(path: str) -> None:
    assert _SMILE is not None
    _SMILE.process_file(path)


def _arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--emodb", type=Path, default=ROOT.parent / "shared" / "data" / "emodb")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-busy", type=float, default=0.3, help="cores others may use before a run starts")
    ap.add_argument("--patience", type=float, default=3600,
                    help="seconds, in all, to wait for a quiet machine; after that runs start regardless")
    ap.add_argument("--limit", type=int, default=None, help="only the first N files (a quick check)")
    ap.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    return ap.parse_args()


def _store(args: argparse.Namespace, work: Path):  # type: ignore[no-untyped-def]
    """Emo-DB (or its first ``--limit`` files) ingested into ``work/store``."""
    labels = args.emodb / "labels.csv"
    if args.limit:
        labels = work / "labels.csv"
        lines = (args.emodb / "labels.csv").read_text().splitlines()
        labels.write_text("\n".join(lines[:args.limit + 1]) + "\n")
    store, _ = ingest("csv", [labels], work / "store", dataset="emodb",
                      columns={"media": "file", "emotion": "emotion", "speaker": "speaker"},
                      media_root=args.emodb / "wav")
    return store


def _runs(store, work: Path, split: dict[str, list[float]]) -> dict[str, Callable[[], None]]:  # type: ignore[no-untyped-def]
    """The six runs; the 1-worker ``run_extraction`` adds its time reading and in openSMILE to ``split``."""
    files = store.table["media"].tolist()
    n = len(files)
    smile = _smile()
    smile.process_file(files[0])  # warm up
    cli = [str(Path(sys.executable).with_name("emostore")), "extract", "audio", str(work / "store"),
           "--feature-set", "egemaps", "--quiet", "--overwrite"]

    def bare() -> None:
        for f in files:
            smile.process_file(f)

    def bare2() -> None:
        with mp.get_context("spawn").Pool(2, initializer=_init) as pool:
            pool.map(_one, files, chunksize=8)

    # where the 1-worker run spends its time: reading + resampling, openSMILE, and the rest
    original_load, original_features = audio.load_audio, OpenSmileEncoder.features

    def timed(key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                split[key][-1] += time.perf_counter() - t0
        return wrapper

    def ours(workers: int) -> Callable[[], None]:
        def run() -> None:
            if workers == 1:
                split["read"].append(0.0)
                split["opensmile"].append(0.0)
                audio.load_audio = timed("read", original_load)  # type: ignore[assignment]
                OpenSmileEncoder.features = timed("opensmile", original_features)  # type: ignore[method-assign]
            try:
                report = run_extraction(store, OpenSmileEncoder.create(feature_set="egemaps"), workers=workers,
                                        overwrite=True, progress=False)
            finally:
                audio.load_audio, OpenSmileEncoder.features = original_load, original_features  # type: ignore
            assert report.complete and report.rows_run == n and report.rows_failed == 0
        return run

    def ours_cli(workers: int) -> Callable[[], None]:
        return lambda: subprocess.run([*cli, "--workers", str(workers)], check=True, capture_output=True)

    return {"bare": bare, "emostore-1": ours(1), "emostore-2": ours(2), "bare-2": bare2,
            "cli-1": ours_cli(1), "cli-2": ours_cli(2)}


def _measure(runs: dict[str, Callable[[], None]], args: argparse.Namespace, n: int) -> dict[str, list[Run]]:
    results: dict[str, list[Run]] = {k: [] for k in runs}
    deadline = time.time() + args.patience
    for r in range(args.repeats):
        for name, fn in runs.items():
            before = wait_quiet(args.max_busy, deadline)
            run = Run(*measure(fn), before=before)
            results[name].append(run)
            print(f"repeat {r} {name}: {run.wall:.2f} s, {n / run.wall:.1f} utt/s, CPU {run.cpu:.1f} s "
                  f"(others: {before:.2f} cores before, {run.others:.2f} during)", flush=True)
    return results


def _report(results: dict[str, list[Run]], split: dict[str, list[float]], n: int, args: argparse.Namespace) -> str:
    quiet = all(x.before <= args.max_busy for v in results.values() for x in v)

    def ratios(a: str, b: str) -> str:
        """Median and range over repeats of wall(a) / wall(b), each pair from the same repeat."""
        q = sorted(x.wall / y.wall for x, y in zip(results[a], results[b], strict=True))
        return f"{statistics.median(q):.2f}x (repeats {', '.join(f'{v:.2f}' for v in q)})"

    def overhead(a: str, b: str) -> str:
        q = sorted(100 * (x.wall / y.wall - 1) for x, y in zip(results[a], results[b], strict=True))
        return f"{statistics.median(q):+.1f}% (repeats {', '.join(f'{v:+.1f}' for v in q)})"

    rest = [x.wall - a - b for x, a, b in zip(results["emostore-1"], split["read"], split["opensmile"],
                                               strict=True)]
    rows = [
        ("bare `Smile.process_file` loop, 1 process", "bare"),
        ("`run_extraction`, 1 worker", "emostore-1"),
        ("`run_extraction`, `workers=2`", "emostore-2"),
        ("bare loop over 2 spawned processes (reference)", "bare-2"),
        ("`emostore extract audio --workers 1` (whole command)", "cli-1"),
        ("`emostore extract audio --workers 2` (whole command)", "cli-2"),
    ]

    def row(label: str, key: str) -> str:
        walls = [x.wall for x in results[key]]
        m = statistics.median(walls)
        cpu = statistics.median(x.cpu for x in results[key])
        others = max(max(x.before, x.others) for x in results[key])
        return (f"| {label} | {m:.2f} s ({min(walls):.2f}-{max(walls):.2f}) | {n / m:.1f} | {cpu:.1f} s "
                f"| {others:.2f} |")

    lines = [
        TITLE,
        "",
        f"Date {date.today().isoformat()}; machine: {machine()}; opensmile {opensmile.__version__}.",
        f"`python bench/audio_speed.py --repeats {args.repeats}`: all {n} Emo-DB files (2.0 s, 22,050 Hz), "
        f"eGeMAPSv02 functionals at 16 kHz; {args.repeats} repeats, the six runs in turn in each. "
        + (f"Every run started once other processes used at most {args.max_busy} cores."
           if quiet else f"The machine never became quiet within {args.patience:.0f} s of waiting: some runs "
           f"started while other processes used more than {args.max_busy} cores (last column)."),
        "",
        "| | wall time, median (range) | utterances/s | CPU time | cores used by others, at most |",
        "|---|---|---|---|---|",
        *[row(label, key) for label, key in rows],
        "",
        f"- Overhead of emostore over the bare loop, 1 worker, per repeat: **{overhead('emostore-1', 'bare')}**; "
        f"whole command, Python start-up included: {overhead('cli-1', 'bare')}.",
        f"- Inside the 1-worker runs (median): {statistics.median(split['read']):.2f} s reading and resampling, "
        f"{statistics.median(split['opensmile']):.2f} s in openSMILE (`process_signal`), "
        f"{statistics.median(rest):.2f} s everything else (table, rows, store writes: "
        f"{100 * statistics.median(r / x.wall for r, x in zip(rest, results['emostore-1'], strict=True)):.1f}% "
        "of the run).",
        f"- 2 workers against 1, per repeat: **{ratios('emostore-1', 'emostore-2')}**; whole command "
        f"{ratios('cli-1', 'cli-2')}; the bare loop on 2 processes {ratios('bare', 'bare-2')}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    args = _arguments()
    work = Path(tempfile.mkdtemp(prefix="emostore-bench-audio-"))
    store = _store(args, work)
    split: dict[str, list[float]] = {"read": [], "opensmile": []}
    n = len(store.table)
    text = _report(_measure(_runs(store, work, split), args, n), split, n, args)
    shutil.rmtree(work, ignore_errors=True)
    print(text)
    if args.write:
        path = ROOT / "BENCHMARKS.md"
        current = path.read_text() if path.exists() else "# Benchmarks\n"
        start = current.find(TITLE)
        if start < 0:  # a new section goes at the end; an existing one is replaced where it stands
            path.write_text(current.rstrip() + "\n\n" + text)
        else:
            end = current.find("\n## ", start + 1)
            path.write_text(current[:start] + text + ("\n" + current[end + 1:] if end >= 0 else ""))


if __name__ == "__main__":
    main()
