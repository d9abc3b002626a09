"""emostore: multimodal emotion recognition for conversations, built on a feature store."""

import os

__version__ = "0.1.0"

# Intel MKL (torch's CPU BLAS) rounds differently with different thread counts for small
# batches. Its strict conditional-numerical-reproducibility mode makes results bit-identical
# whatever the number of threads, so one process, `--workers N` and Dask workers (one BLAS thread
# each) write the same store. Set MKL_CBWR yourself to choose otherwise; it must be set before
# torch runs its first operation.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
