"""How much memory the heads may fill with feature vectors: ``--memory-budget``.

Features that fit the budget are loaded into memory once; larger ones stream from the store
(:mod:`emostore.heads.stream`). The default is a share of the memory available when the command
starts, so that a command leaves room for everything else on the machine.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from emostore.errors import UserError

#: Share of the available memory that the default budget takes.
DEFAULT_SHARE = 0.5
UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
         "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def available_memory() -> int:
    """Bytes of memory available to a new allocation (``MemAvailable``), else the physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def parse_size(text: str | int | float) -> int:
    """``"4G"``, ``"512MB"``, ``"1.5GiB"``, ``"64k"`` or a number of bytes -> bytes."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([a-zA-Z]*)\s*", str(text))
    if m is None or m.group(2).lower() not in UNITS:
        raise UserError(f"--memory-budget: cannot read {text!r}; write a size such as 4G, 512M or 64k")
    size = int(float(m.group(1)) * UNITS[m.group(2).lower()])
    if size <= 0:
        raise UserError(f"--memory-budget must be positive, got {text!r}")
    return size


def resolve_budget(budget: str | int | float | None) -> int:
    """The budget in bytes: as given, else :data:`DEFAULT_SHARE` of the available memory."""
    return parse_size(budget) if budget is not None else int(DEFAULT_SHARE * available_memory())


def gib(n: float) -> str:
    """A size in bytes, readable: GiB, MiB or KiB."""
    if n >= 2**28:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**18 else f"{n / 2**10:.0f} KiB"
