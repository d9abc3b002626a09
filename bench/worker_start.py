"""What starting an extraction worker process costs (issue 10): seconds from spawning two workers
until both have built their openSMILE encoder, and the imports a worker makes.

* ``now``: :func:`emostore.extract.runner.start_workers` as ``emostore extract --workers 2``
  calls it: the parent's ``__main__`` is not re-imported, workers import
  :mod:`emostore.extract.worker` and build their encoder at once.
* ``before``: what a worker did before: the command line's ``__main__`` module re-imported
  (``emostore.cli``), then :mod:`emostore.extract.runner` (store, Zarr, progress bars), then the
  encoder built.

Each is measured ``--repeats`` times in turn; the load average is printed before and after.

    python bench/worker_start.py [--repeats 5] [--write]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

from emostore.extract import worker
from emostore.extract.runner import start_workers

BUILD = ("audio", "opensmile", {"feature_set": "egemaps"}, {}, None)
TITLE = "## Extraction workers: start-up (issue 10)"


def _before_init() -> None:
    import emostore.cli  # what re-running the command line's main module imported
    import emostore.extract.runner  # noqa: F401

    worker.start(BUILD)


def ready_now() -> float:
    t = time.perf_counter()
    pool = start_workers(2, BUILD)
    for f in [pool.submit(worker.ready) for _ in range(2)]:
        f.result()
    wall = time.perf_counter() - t
    pool.shutdown()
    return wall


def ready_before() -> float:
    t = time.perf_counter()
    pool = ProcessPoolExecutor(2, mp_context=mp.get_context("spawn"), initializer=_before_init)
    for f in [pool.submit(worker.ready) for _ in range(2)]:
        f.result()
    wall = time.perf_counter() - t
    pool.shutdown()
    return wall


def import_seconds(modules: str) -> float:
    code = f"import time; t = time.perf_counter(); import {modules}; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    args = ap.parse_args()
    load = Path("/proc/loadavg").read_text().split()[0]
    now, before, imp_now, imp_before = [], [], [], []
    for _ in range(args.repeats):
        now.append(ready_now())
        before.append(ready_before())
        imp_now.append(import_seconds("emostore.extract.worker, emostore.extract.encoders.opensmile"))
        imp_before.append(import_seconds("emostore.cli, emostore.extract.runner, emostore.extract.encoders.opensmile"))
    after = Path("/proc/loadavg").read_text().split()[0]
    med = statistics.median
    lines = [TITLE, "",
             (f"Date {date.today().isoformat()}; {os.cpu_count()} cores, shared with other jobs (load average {load} "
              f"before, {after} after). `python bench/worker_start.py --repeats {args.repeats}`: medians of "
              f"{args.repeats}, the two ways measured in turn."), "",
             "| | now | before |", "|---|---|---|",
             f"| two spawned workers ready, openSMILE encoder built | {med(now):.2f} s | {med(before):.2f} s |",
             f"| a worker's imports | {med(imp_now):.2f} s | {med(imp_before):.2f} s |", ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        sys.path.insert(0, str(Path(__file__).parent))
        import benchlib

        benchlib.write_section(TITLE, text)


if __name__ == "__main__":
    main()
