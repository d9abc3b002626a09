"""Running one measured step of the scale benchmark: a command in its own process, with its wall
time, CPU time (user + system, its children included) and peak resident memory, and the state of
the machine while it ran (load average, and the CPU that other processes used meanwhile).

A step whose memory passes ``cap_mb`` is stopped (its whole process group), so that a command that
would not fit does not push other people's work out of memory; the result says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]


def busy_jiffies() -> tuple[int, int]:
    """``(busy, total)`` CPU ticks of the whole machine since boot (``/proc/stat``)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def run(cmd: list[str], *, cap_mb: float, env: dict[str, str] | None = None, log: Path | None = None,
        timeout_s: float | None = None) -> dict[str, Any]:
    """Run ``cmd`` measured (see the module). Returns wall_s, cpu_s, peak_rss_mb, the machine state,
    the return code, stdout (parsed as JSON when it is) and why it was stopped, if it was."""
    tick = os.sysconf("SC_CLK_TCK")
    busy0, _ = busy_jiffies()
    state0 = load()
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as stdout, open(log or os.devnull, "a") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env={**os.environ, **(env or {})},
                                start_new_session=True, text=True, cwd=ROOT)
        watcher = psutil.Process(proc.pid)
        peak_tree, stopped = 0, None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            with contextlib.suppress(psutil.NoSuchProcess):
                peak_tree = max(peak_tree, tree_rss(watcher))
            over_time = timeout_s and time.perf_counter() - start > timeout_s
            if stopped is None and (peak_tree > cap_mb * 2**20 or over_time):
                stopped = (f"stopped: ran past {timeout_s:,.0f} s" if over_time
                           else f"stopped: resident memory passed {cap_mb:,.0f} MB")
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.1)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        stdout.seek(0)
        text = stdout.read()
    busy1, _ = busy_jiffies()
    cpu = usage.ru_utime + usage.ru_stime
    peak = max(usage.ru_maxrss * 1024, peak_tree)
    others = max(0.0, (busy1 - busy0) / tick - cpu) / max(wall * (os.cpu_count() or 1), 1e-9)
    try:
        parsed: Any = json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        parsed = text[-2000:]
    return {"cmd": " ".join(cmd[2:] if cmd[:2] == [sys.executable, "-m"] else cmd), "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3), "peak_rss_mb": round(peak / 2**20, 1), "returncode": proc.returncode,
            "stopped": stopped, "load_before": state0, "load_after": load(),
            "others_cpu": round(others, 3), "output": parsed}


def emostore(*args: str) -> list[str]:
    """The command line of ``emostore ARGS`` from this checkout."""
    return [sys.executable, "-m", "emostore.cli", *args]
