"""How FAISS runs here: matrix products for batches of queries, OpenMP threads that fit the free cores,
and the GPU when there is one.

Two defaults of faiss-cpu 1.15 made exact search slower than a NumPy matrix product on this kind of
machine (2 cores, shared with other work):

- ``faiss.cvar.distance_compute_blas_threshold`` is 128000 and FAISS compares it with
  ``n_queries * dim``: below it, every query is scored against every vector in a SIMD loop, one
  query per thread, instead of one BLAS matrix product per block of vectors. At 384 dimensions any
  batch under 334 queries took the slow loop (100 queries against 1M vectors: 12.6 s instead of
  about 1.5 s). We switch to BLAS from :data:`BLAS_MIN_QUERIES` queries on; fewer queries keep the
  loop, which for one query reads each vector once and keeps no score matrix.
- FAISS (and the OpenBLAS inside faiss-cpu, an OpenMP build) starts one OpenMP thread per core,
  and each parallel region waits for its slowest thread. When other processes keep the cores
  busy, a thread that the kernel has put aside holds up every region, and waiting threads spin.
  We give FAISS the cores that are free (the cores this process may use, less the 1-minute load
  average, at least one), and ask OpenMP to sleep rather than spin while it waits
  (``OMP_WAIT_POLICY=PASSIVE``, unless already set, before FAISS is first imported).
  ``EMOSTORE_FAISS_THREADS`` (or ``OMP_NUM_THREADS``) fixes the number instead.

OpenMP settings belong to the thread that sets them, so :func:`configure` runs before every
build and search, in the thread that does it.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from emostore.errors import UserError

log = logging.getLogger("emostore.search")

#: From this many queries in one call on, FAISS scores them with one matrix product per block of vectors.
BLAS_MIN_QUERIES = 8


def faiss() -> Any:
    """The ``faiss`` module (imported on first use, with OpenMP told not to spin)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import faiss as module
    except ImportError:
        raise UserError("search needs FAISS: pip install 'emostore[search]' (faiss-cpu), "
                        "or 'emostore[gpu]' (faiss-gpu) on a CUDA machine") from None
    return module


def cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def free_cores() -> int:
    """Cores not kept busy by other processes (the 1-minute load average says how many are), at least 1."""
    n = cores()
    try:
        busy = os.getloadavg()[0]
    except OSError:
        return n
    return max(1, min(n, int(n - busy + 0.5)))


def threads() -> int:
    """OpenMP threads for the next FAISS call: ``EMOSTORE_FAISS_THREADS``, else ``OMP_NUM_THREADS``,
    else the free cores."""
    for var in ("EMOSTORE_FAISS_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value:
            try:
                return max(1, int(value.split(",")[0]))
            except ValueError:
                raise UserError(f"{var}={value!r}: give a whole number of threads") from None
    return free_cores()


def configure(dim: int, n_threads: int | None = None) -> int:
    """Set FAISS up for a build or search over ``dim``-dimensional vectors in this thread; returns
    the number of OpenMP threads it will use."""
    f = faiss()
    f.cvar.distance_compute_blas_threshold = BLAS_MIN_QUERIES * int(dim)
    n = n_threads or threads()
    f.omp_set_num_threads(n)
    return n


@functools.cache
def gpu_resources() -> Any:
    """One set of GPU resources (scratch memory, streams) per process, shared by every index."""
    return faiss().StandardGpuResources()


def gpus() -> int:
    f = faiss()
    return int(f.get_num_gpus()) if hasattr(f, "get_num_gpus") else 0


def to_gpu(index: Any, kind: str) -> Any | None:
    """A GPU copy of ``index`` when a GPU is present and FAISS has one for this kind, else ``None``.

    FAISS has no GPU HNSW; IVF-PQ uses float16 lookup tables, which every code size needs on the GPU."""
    if kind == "hnsw" or gpus() == 0:
        return None
    f = faiss()
    options = f.GpuClonerOptions()
    options.useFloat16LookupTables = True
    try:
        return f.index_cpu_to_gpu(gpu_resources(), 0, index, options)
    except Exception as exc:  # noqa: BLE001  (e.g. a PQ size the GPU kernels lack: the CPU index still works)
        log.warning("FAISS could not put this %s index on the GPU (%s); searching on the CPU", kind, exc)
        return None
