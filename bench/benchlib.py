"""What the benchmark scripts share: the machine line and writing one section of BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    return f"{os.cpu_count()} cores ({cpu_name()})"


def write_section(title: str, text: str) -> None:
    """Replace (or append) the section headed ``title`` in BENCHMARKS.md."""
    path = ROOT / "BENCHMARKS.md"
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    start = current.find(title)
    if start >= 0:
        end = current.find("\n## ", start + 1)
        current = current[:start] + (current[end + 1:] if end >= 0 else "")
    path.write_text(current.rstrip() + "\n\n" + text.rstrip() + "\n")
