"""Where and how models run: the device, the numeric precision and the CPU threads.

Every package takes these from here, so that ``--device`` and ``--precision`` mean the same in
every command. ``auto`` precision follows the hardware:

- CUDA: float16 for inference; bfloat16 autocast for training where the card has it (float16
  with loss scaling elsewhere).
- A CPU with bfloat16 matrix units (Intel AMX or AVX-512 BF16, :func:`cpu_has_fast_bf16`):
  bfloat16, for inference and training alike (2-3x faster than float32 there).
- Any other CPU, and Apple MPS: float32.

The precision a feature set was made with is part of its configuration, so a store never mixes
rows of two precisions; a configuration read back keeps its precision, except float16 on a CPU,
which becomes float32 (float16 matrix products on a CPU are slow and not what a CPU user wants).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from emostore.errors import UserError

PRECISIONS = ("float32", "float16", "bfloat16")
#: CPU flags (``/proc/cpuinfo``) of hardware bfloat16 matrix arithmetic.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where ``/proc/cpuinfo`` cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AMX or AVX-512 BF16)."""
    return any(flag in cpu_flags() for flag in BF16_FLAGS)


def resolve_device(device: str) -> str:
    """``auto`` picks CUDA when present, then Apple MPS, else the CPU."""
    import torch

    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_precision(precision: str, device: str, *, training: bool = False) -> str:
    """The precision ``precision`` (``auto`` or one of :data:`PRECISIONS`) means on ``device``.

    Inference casts the weights; training keeps float32 weights under autocast. Training in
    float16 needs CUDA (loss scaling); it is refused elsewhere."""
    if precision == "auto":
        if device.startswith("cuda"):
            if not training:
                return "float16"
            import torch

            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        if device == "cpu" and cpu_has_fast_bf16():
            return "bfloat16"
        return "float32"
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be auto, {', '.join(PRECISIONS)}, got {precision!r}")
    if training and precision == "float16" and not device.startswith("cuda"):
        raise UserError("--precision float16 needs a CUDA device for training; use float32 or bfloat16 on the CPU")
    return precision


def stored_precision(precision: str, device: str) -> str:
    """The precision to rebuild a stored configuration with on ``device``: the recorded one,
    except float16 on a CPU, which becomes float32 (see the module docstring)."""
    return "float32" if precision == "float16" and device == "cpu" else precision


def autocast(device: str, precision: str) -> Any:
    """Mixed-precision autocast for ``precision`` on ``device`` (a no-op for float32)."""
    if precision == "float32":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, precision))


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (None: unchanged), then restore the number."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
