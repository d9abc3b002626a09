"""How FAISS runs here: matrix products for batches of queries, OpenMP threads that fit the free cores,
and the GPU when there is one.

Three things made exact search slower than a NumPy matrix product on this kind of machine (2 cores,
shared with other work):

- ``faiss.cvar.distance_compute_blas_threshold`` is 128000 and FAISS compares it with
  ``n_queries * dim``: below it, every query is scored against every vector in a SIMD loop, one
  query per thread, instead of one BLAS matrix product per block of vectors. At 384 dimensions any
  batch under 334 queries took the slow loop (100 queries against 1M vectors: 12.6 s instead of
  about 3 s). We switch to BLAS from :data:`BLAS_MIN_QUERIES` queries on; fewer queries keep the
  loop, which for one query reads each vector once and keeps no score matrix.
- FAISS (and the OpenBLAS inside faiss-cpu, an OpenMP build) starts one OpenMP thread per core,
  and each parallel region waits for its slowest thread. When other processes keep the cores
  busy, a thread that the kernel has put aside holds up every region, and waiting threads spin.
  We give FAISS the cores that are free (the cores this process may use, less the CPU time other
  processes used since the last look, at least one; not the load average, which lags by a minute),
  and the commands ask OpenMP to sleep rather than spin while it waits
  (:func:`quiet_openmp`: ``OMP_WAIT_POLICY=PASSIVE``, unless already set, before FAISS loads).
  ``EMOSTORE_FAISS_THREADS`` (or ``OMP_NUM_THREADS``) fixes the number instead.
- One query is scored by one thread: FAISS splits its work by query, and one thread does not use
  the memory bandwidth a scan of 1M vectors needs. A matrix-vector product reads the vectors with
  every core; so a single query against a flat index is one BLAS product over FAISS's own copy of
  the vectors, then a partial sort (:func:`flat_single_query`). Slicing the vectors and searching
  the slices with FAISS in parallel threads was tried first: no faster than one thread here.

OpenMP settings belong to the thread that sets them, so :func:`configure` runs before every
build and search, in the thread that does it. The BLAS blocks are 256 queries by 16384 vectors
(FAISS: 4096 by 1024): fewer, larger matrix products, so fewer OpenMP fork-joins, in a buffer of
16 MB.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from typing import Any

import numpy as np

from emostore.errors import UserError

log = logging.getLogger("emostore.search")

#: From this many queries in one call on, FAISS scores them with one matrix product per block of vectors.
BLAS_MIN_QUERIES = 2
BLAS_QUERY_BLOCK, BLAS_VECTOR_BLOCK = 256, 16384


def quiet_openmp() -> None:
    """OpenMP threads sleep while they wait, instead of spinning (``OMP_WAIT_POLICY=PASSIVE`` unless set).
    OpenMP reads it once, when its library loads: the commands call this before FAISS or PyTorch load.
    Once either is loaded it could only change child processes, so it does nothing then."""
    if "torch" not in sys.modules and "faiss" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def faiss() -> Any:
    """The ``faiss`` module, imported on first use."""
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


#: The last reading of the machine's and this process's CPU time: (monotonic s, busy jiffies, all jiffies,
#: this process's CPU s), and the free cores it gave.
_reading: list[Any] = []


def _cpu_times() -> tuple[float, float, float, float]:
    """(now, busy CPU seconds of the machine, all CPU seconds, this process's CPU seconds), with
    psutil. Idle, I/O wait and niced time (processes that give way to this one) are not busy."""
    import psutil

    t = psutil.cpu_times()
    total = sum(t)
    free = t.idle + getattr(t, "iowait", 0.0) + getattr(t, "nice", 0.0)
    return time.monotonic(), total - free, total, time.process_time()


def free_cores() -> int:
    """Cores not kept busy by other processes, at least 1: the machine's busy CPU time (psutil;
    niced processes, which give way, do not count) less this process's own, since the last call
    (re-read at most every 0.25 s; the first call samples 20 ms). Not the load average: it lags by
    a minute and counts this process's own work."""
    n = cores()
    try:
        now = _cpu_times()
        if not _reading:
            time.sleep(0.02)
            _reading[:] = [now, None]
            now = _cpu_times()
        elif now[0] - _reading[0][0] < 0.25:
            return _reading[1]
        last = _reading[0]
        total_cpus = os.cpu_count() or n
        others = (now[1] - last[1]) / max(1, now[2] - last[2]) * total_cpus - (now[3] - last[3]) / (now[0] - last[0])
        free = max(1, min(n, int(n - max(0.0, others) + 0.5)))
        _reading[:] = [now, free]
        return free
    except (OSError, ValueError, ZeroDivisionError):  # CPU times unreadable: the load average instead
        try:
            return max(1, min(n, int(n - os.getloadavg()[0] + 0.5)))
        except OSError:
            return n


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


def openmp_threads() -> int:
    """This thread's OpenMP thread count. FAISS and PyTorch share one OpenMP runtime here, so a FAISS
    call must give back the count it found (:func:`restore`), or PyTorch runs with FAISS's afterwards."""
    return int(faiss().omp_get_max_threads())


def restore(n: int) -> None:
    faiss().omp_set_num_threads(n)


def configure(dim: int, n_threads: int | None = None) -> int:
    """Set FAISS up for a build or search over ``dim``-dimensional vectors in this thread; returns
    the number of OpenMP threads it will use (call :func:`restore` with :func:`openmp_threads`'s
    value from before, afterwards)."""
    f = faiss()
    f.cvar.distance_compute_blas_threshold = BLAS_MIN_QUERIES * int(dim)
    f.cvar.distance_compute_blas_query_bs = BLAS_QUERY_BLOCK
    f.cvar.distance_compute_blas_database_bs = BLAS_VECTOR_BLOCK
    n = n_threads or threads()
    f.omp_set_num_threads(n)
    return n


def flat_single_query(index: Any, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` of one query in a flat inner-product index: one matrix-vector product over the
    index's own storage (a view, no copy), which BLAS runs on every core, where FAISS would give the
    query one thread. The ties and the order of the result are FAISS's (highest first, lower id first)."""
    f = faiss()
    n, d = index.ntotal, index.d
    vectors = f.rev_swig_ptr(index.get_xb(), n * d).reshape(n, d)
    sims = vectors @ query[0]
    k_eff = min(k, n)
    top = np.argpartition(-sims, k_eff - 1)[:k_eff] if k_eff < n else np.arange(n)
    top = top[np.lexsort((top, -sims[top]))]
    out_s = np.full((1, k), -np.inf, np.float32)
    out_i = np.full((1, k), -1, np.int64)
    out_s[0, :k_eff], out_i[0, :k_eff] = sims[top], top
    return out_s, out_i


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
