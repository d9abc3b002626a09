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
  We give FAISS the cores that are free (the cores this process may use, less the 1-minute load
  average, at least one), and the commands ask OpenMP to sleep rather than spin while it waits
  (:func:`quiet_openmp`: ``OMP_WAIT_POLICY=PASSIVE``, unless already set, before FAISS loads).
  ``EMOSTORE_FAISS_THREADS`` (or ``OMP_NUM_THREADS``) fixes the number instead.
- One query is scored by one thread: FAISS splits its work by query. A matrix product by NumPy
  reads the vectors with every core; so for a single query against a flat index we split the
  vectors into one slice per free core and search the slices in parallel (FAISS releases the GIL),
  reading FAISS's own copy of the vectors, and merge the top ``k``.

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
from concurrent.futures import ThreadPoolExecutor
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


@functools.cache
def _pool(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(n, thread_name_prefix="emostore-faiss")


def sliced_flat_search(index: Any, query: np.ndarray, k: int, n_threads: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` of one query in a flat inner-product index, its vectors cut into ``n_threads``
    slices searched in parallel (no copy: the slices are views of the index's storage)."""
    f = faiss()
    n, d = index.ntotal, index.d
    vectors = f.rev_swig_ptr(index.get_xb(), n * d).reshape(n, d)
    bounds = np.linspace(0, n, n_threads + 1).astype(np.int64)

    def part(i: int) -> tuple[np.ndarray, np.ndarray]:
        sims, ids = f.knn(query, vectors[bounds[i]:bounds[i + 1]], k, f.METRIC_INNER_PRODUCT)
        return sims, np.where(ids >= 0, ids + bounds[i], -1)

    parts = list(_pool(n_threads).map(part, range(n_threads)))
    sims = np.concatenate([p[0] for p in parts], axis=1)
    ids = np.concatenate([p[1] for p in parts], axis=1)
    best = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, best, 1), np.take_along_axis(ids, best, 1)


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
