"""Audio extraction throughput on all of Emo-DB: emostore against a bare openSMILE loop.

Both sides compute eGeMAPSv02 functionals at 16 kHz (openSMILE resamples the 22,050 Hz files
itself in the bare loop, ``Smile(..., sampling_rate=16000, resample=True).process_file``).
Measured, each in this process after imports, best of ``--repeats`` alternating runs:

* the bare loop over the files, and the same loop over 2 spawned processes (a reference for
  what the machine gives);
* ``run_extraction`` (what ``emostore extract audio --feature-set egemaps`` runs) with 1 and 2
  workers, into a fresh feature set each time;
* the command line itself end to end (Python start-up and imports included).

The machine is shared, so before every run the script waits until other processes use less
than ``--max-busy`` cores (measured from /proc/stat over 3 s while this script sleeps), and it
records what others used during each run. Writes a section of BENCHMARKS.md (``--write``).

    python bench/audio_speed.py [--emodb ../shared/data/emodb] [--repeats 2] [--write]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import opensmile

from emostore.extract.audio import OpenSmileEncoder
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


def measure(fn: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, cores other processes used meanwhile: machine busy minus ours)."""
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
    return wall, others


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--emodb", type=Path, default=ROOT.parent / "shared" / "data" / "emodb")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-busy", type=float, default=0.3, help="cores others may use before a run starts")
    ap.add_argument("--patience", type=float, default=3600,
                    help="seconds, in all, to wait for a quiet machine; after that runs start regardless")
    ap.add_argument("--limit", type=int, default=None, help="only the first N files (a quick check)")
    ap.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="emostore-bench-audio-"))
    labels = args.emodb / "labels.csv"
    if args.limit:
        labels = work / "labels.csv"
        lines = (args.emodb / "labels.csv").read_text().splitlines()
        labels.write_text("\n".join(lines[:args.limit + 1]) + "\n")
    store, _ = ingest("csv", [labels], work / "store", dataset="emodb",
                      columns={"media": "file", "emotion": "emotion", "speaker": "speaker"},
                      media_root=args.emodb / "wav")
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

    def ours(workers: int) -> Callable[[], None]:
        def run() -> None:
            report = run_extraction(store, OpenSmileEncoder("egemaps"), workers=workers, overwrite=True,
                                    progress=False)
            assert report.complete and report.rows_run == n and report.rows_failed == 0
        return run

    def ours_cli(workers: int) -> Callable[[], None]:
        return lambda: subprocess.run([*cli, "--workers", str(workers)], check=True, capture_output=True)

    runs = {"bare": bare, "emostore-1": ours(1), "bare-2": bare2, "emostore-2": ours(2),
            "cli-1": ours_cli(1), "cli-2": ours_cli(2)}
    results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in runs}
    deadline = time.time() + args.patience
    for r in range(args.repeats):
        for name, fn in runs.items():
            before = wait_quiet(args.max_busy, deadline)
            wall, others = measure(fn)
            results[name].append((wall, before, others))
            print(f"repeat {r} {name}: {wall:.2f} s, {n / wall:.1f} utt/s (others: {before:.2f} cores "
                  f"before, {others:.2f} during)", flush=True)

    best = {k: min(v) for k, v in results.items()}
    quiet = all(before <= args.max_busy for v in results.values() for _, before, _ in v)
    t = {k: v[0] for k, v in best.items()}
    rows = [
        ("bare `Smile.process_file` loop, 1 process", "bare"),
        ("bare loop over 2 spawned processes (reference)", "bare-2"),
        ("`run_extraction`, 1 worker", "emostore-1"),
        ("`run_extraction`, `workers=2`", "emostore-2"),
        ("`emostore extract audio --workers 1` (whole command)", "cli-1"),
        ("`emostore extract audio --workers 2` (whole command)", "cli-2"),
    ]
    lines = [
        TITLE,
        "",
        f"Date {date.today().isoformat()}; machine: {machine()}; opensmile {opensmile.__version__}.",
        f"`python bench/audio_speed.py --repeats {args.repeats}`: all {n} Emo-DB files (2.0 s, 22,050 Hz), "
        "eGeMAPSv02 functionals at 16 kHz, best of "
        f"{args.repeats} alternating runs. "
        + (f"Every run started once other processes used at most {args.max_busy} cores."
           if quiet else f"The machine never became quiet within {args.patience:.0f} s of waiting: some runs "
           f"started while other processes used more than {args.max_busy} cores (see the table)."),
        "",
        "| | wall time | utterances/s | cores used by other processes: before / during the run |",
        "|---|---|---|---|",
        *[f"| {label} | {t[k]:.2f} s | {n / t[k]:.1f} | {best[k][1]:.2f} / {best[k][2]:.2f} |"
          for label, k in rows],
        "",
        f"- Overhead of emostore over the bare loop, 1 worker: **{100 * (t['emostore-1'] / t['bare'] - 1):+.1f}%** "
        f"(whole command, start-up included: {100 * (t['cli-1'] / t['bare'] - 1):+.1f}%).",
        f"- 2 workers against 1: **{t['emostore-1'] / t['emostore-2']:.2f}x** "
        f"(whole command {t['cli-1'] / t['cli-2']:.2f}x; the bare loop on 2 processes "
        f"{t['bare'] / t['bare-2']:.2f}x).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        path = ROOT / "BENCHMARKS.md"
        current = path.read_text() if path.exists() else "# Benchmarks\n"
        start = current.find(TITLE)
        if start >= 0:
            end = current.find("\n## ", start + 1)
            current = current[:start] + current[end + 1:] if end >= 0 else current[:start]
        path.write_text(current.rstrip() + "\n\n" + text)


if __name__ == "__main__":
    main()
