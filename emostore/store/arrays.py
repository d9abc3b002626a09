"""How every array of a store is made and checked: each chunk carries a CRC32C checksum (Zarr 3's
``crc32c`` codec, after zstd), and every chunk is written even when it holds only the fill
value, so that a chunk file that is missing is damage, never "all fill".

Zarr checks a chunk's checksum whenever it decodes it (a mismatch raises). :func:`check_chunk`
checks the stored bytes without decoding them, at disk speed, for ``emostore verify`` and for
``extract``, which must not take a damaged chunk for a finished one. :func:`read_whole` decodes
a whole array of many small chunks through zarrs' Rust codec pipeline, which checks the same
checksums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

#: Compression, then the checksum of the compressed bytes (verified without decompressing).
COMPRESSORS = (ZstdCodec(level=0), Crc32cCodec())
#: For bytes that do not compress (a saved FAISS index): the checksum alone.
CHECKSUM_ONLY = (Crc32cCodec(),)
#: A chunk that holds only the fill value is still written: its absence then means damage.
WRITE = {"write_empty_chunks": True}
#: Group attribute of feature sets and tables made with checksums and every chunk written.
INTEGRITY = "integrity"
INTEGRITY_VERSION = 1


def create(group: zarr.Group, name: str, *, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any,
           fill_value: Any, compressors: Any = COMPRESSORS, overwrite: bool = False) -> zarr.Array:
    """A new array of ``group`` with checksummed chunks, every chunk written."""
    return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value,
                              compressors=compressors, overwrite=overwrite, config=WRITE)


def writable(arr: zarr.Array) -> zarr.Array:
    """``arr`` as a writer must use it: chunks of fill values are written too."""
    return arr.with_config(WRITE)


def has_checksums(arr: zarr.Array) -> bool:
    return any(isinstance(c, Crc32cCodec) for c in arr.metadata.codecs)  # type: ignore[union-attr]


def chunk_key(arr: zarr.Array, index: int) -> str:
    """The key (relative to the array) of chunk ``index`` along the first axis (``c/3`` or ``c/3/0``)."""
    return "c/" + "/".join([str(index)] + ["0"] * (len(arr.shape) - 1))


def n_chunks(arr: zarr.Array) -> int:
    return -(-int(arr.shape[0]) // int(arr.chunks[0])) if arr.shape and arr.shape[0] else 0


def crc_ok(data: bytes) -> bool:
    """Whether ``data`` (a stored chunk) ends with the CRC32C of the rest."""
    import google_crc32c

    if len(data) < 4:
        return False
    return np.uint32(google_crc32c.value(data[:-4])).tobytes() == data[-4:]


@dataclass
class ChunkState:
    """One stored chunk: absent, present with a bad checksum, or fine."""

    index: int
    problem: str | None  # None when fine


def check_chunks(location: Any, path: str, arr: zarr.Array, indexes: list[int] | None = None, *,
                 expect_all: bool = True, checksums: bool = True) -> list[ChunkState]:
    """The chunks of ``arr`` (at ``path`` in the store at ``location``) that are absent or whose
    stored bytes fail their checksum. ``expect_all``: every chunk should exist (arrays written
    with :data:`WRITE`); otherwise an absent chunk is taken for fill values. ``checksums``: also
    read the chunks' bytes (else only their presence is checked, from one listing)."""
    fs = location.fs
    base = location.key(path)
    present = {p[len(base) + 1:] for p in _find(fs, f"{base}/c")}
    checksums = checksums and has_checksums(arr)
    out = []
    for i in (range(n_chunks(arr)) if indexes is None else indexes):
        key = chunk_key(arr, i)
        if key not in present:
            if expect_all:
                out.append(ChunkState(i, "chunk file missing"))
            continue
        if checksums:
            data = fs.cat_file(f"{base}/{key}")
            if not data:
                out.append(ChunkState(i, "chunk file empty (0 bytes)"))
            elif not crc_ok(data):
                out.append(ChunkState(i, "checksum mismatch (the chunk's bytes changed)"))
    return out


#: zarr-python's codec pipeline implemented in Rust (the ``zarrs`` package).
ZARRS_PIPELINE = "zarrs.ZarrsCodecPipeline"


def read_whole(group: zarr.Group, key: str) -> np.ndarray | None:
    """All of array ``key`` decoded by the zarrs pipeline, or None when that cannot be done: zarrs
    not installed, a store it does not support, or any chunk that fails (the caller then reads it
    with zarr's own pipeline, which names the damaged chunk). For ``done`` and ``mask``: one small
    chunk per chunk of rows (2,442 in a 10M-row store), which zarr-python decodes at about 0.25 ms
    a chunk and zarrs ten times faster. Checksums are checked all the same (a mismatch fails)."""
    try:
        import zarrs  # noqa: F401  (registers nothing: the config below names its pipeline)
    except ImportError:
        return None
    try:
        # the pipeline is chosen when the array is opened; the read itself runs outside the setting
        with zarr.config.set({"codec_pipeline.path": ZARRS_PIPELINE}):
            arr = group[key]
        return np.asarray(arr[...])
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # noqa: BLE001  (any failure, a Rust panic included: the caller's read reports it)
        return None


def _find(fs: Any, prefix: str) -> list[str]:
    try:
        return list(fs.find(prefix))
    except FileNotFoundError:
        return []
