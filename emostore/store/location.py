"""Where a store lives: a local directory, or a URL that fsspec understands (``s3://``, ``gs://``, ...).

Local stores go through Zarr's ``LocalStore`` (each file replaced atomically by rename); URLs
through Zarr's ``FsspecStore`` (each object replaced whole by a PUT). ``file://`` URLs are local
directories. Options for the filesystem come from ``$EMOSTORE_STORAGE_OPTIONS`` (a JSON object,
e.g. ``{"anon": true}``); credentials and endpoints from the backend's usual environment and
files (for S3: ``AWS_PROFILE``, ``AWS_ACCESS_KEY_ID``..., and ``AWS_ENDPOINT_URL`` for an
S3-compatible server such as MinIO or Ceph).

The one primitive that object stores lack, a lock, is replaced by :meth:`Location.create_exclusive`:
write an object only if it does not exist yet (``If-None-Match: *`` on S3, ``O_EXCL``-like
``link`` on a local disk), which gives exactly one winner among concurrent writers.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from emostore.errors import UserError

ENV_OPTIONS = "EMOSTORE_STORAGE_OPTIONS"
#: Extra that provides each protocol's filesystem.
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}
#: Attempts of each S3 request (botocore's standard mode: exponential backoff between them).
S3_ATTEMPTS = 4
#: Directory listings must never be served from a cache: other machines write the same store.
NO_LISTING_CACHE = {"s3", "s3a", "gs", "gcs"}


def env_storage_options() -> dict[str, Any]:
    text = os.environ.get(ENV_OPTIONS, "").strip()
    if not text:
        return {}
    try:
        opts = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"${ENV_OPTIONS} is not valid JSON ({exc})") from None
    if not isinstance(opts, dict):
        raise UserError(f"${ENV_OPTIONS} must be a JSON object, got {text!r}")
    return opts


@dataclass(frozen=True)
class Location:
    """A store's root. ``url`` is what the user gave (a path or a URL); it is also what is shown."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def parse(cls, where: str | Path | Location) -> Location:
        if isinstance(where, Location):
            return where
        text = str(where)
        if "://" not in text or text.startswith("file://"):
            return cls(text)
        protocol = text.split("://", 1)[0].lower()
        opts = env_storage_options()
        if protocol in NO_LISTING_CACHE:
            opts.setdefault("use_listings_cache", False)
        if protocol in ("s3", "s3a"):  # transient errors: a few retries with exponential backoff, then fail
            opts.setdefault("config_kwargs", {"retries": {"max_attempts": S3_ATTEMPTS, "mode": "standard"},
                                              "connect_timeout": 10, "read_timeout": 60})
        return cls(text.rstrip("/"), opts)

    def __getstate__(self) -> dict[str, Any]:
        """Sent to cluster workers without its open filesystem: each opens its own."""
        return {"url": self.url, "storage_options": self.storage_options}

    # ----- what it is --------------------------------------------------------------------
    @property
    def protocol(self) -> str:
        return self.url.split("://", 1)[0].lower() if "://" in self.url else "file"

    @property
    def local_path(self) -> Path | None:
        """The directory, for a store on the local disk; None for object storage."""
        if self.url.startswith("file://"):
            return Path(self.url[len("file://"):])
        return None if "://" in self.url else Path(self.url)

    @property
    def is_local(self) -> bool:
        return self.local_path is not None

    def __str__(self) -> str:
        return self.url

    def child(self, *parts: str) -> str:
        """A path or URL below the root, for messages."""
        return "/".join([self.url.rstrip("/"), *parts])

    # ----- access ------------------------------------------------------------------------
    @cached_property
    def _fs_and_root(self) -> tuple[Any, str]:
        import fsspec

        if self.is_local:
            return fsspec.filesystem("file"), str(Path(self.local_path).resolve())  # type: ignore[arg-type]
        try:
            return fsspec.core.url_to_fs(self.url, **self.storage_options)
        except ImportError as exc:
            extra = EXTRAS.get(self.protocol)
            hint = f"pip install 'emostore[{extra}]'" if extra else f"install the fsspec backend for {self.protocol}://"
            raise UserError(f"{self.url}: {exc}; {hint}") from None
        except ValueError as exc:  # fsspec: "Protocol not known"
            raise UserError(f"{self.url}: {exc} (stores are paths or URLs such as s3://bucket/prefix)") from None

    @property
    def fs(self) -> Any:
        return self._fs_and_root[0]

    @property
    def root(self) -> str:
        """The root as a path inside :attr:`fs` (``bucket/prefix`` for S3)."""
        return self._fs_and_root[1]

    def key(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key}" if key else self.root

    def zarr_store(self, read_only: bool = False) -> Any:
        """The Zarr store over this location."""
        from zarr.storage import FsspecStore, LocalStore

        if self.is_local:
            return LocalStore(self.local_path, read_only=read_only)  # type: ignore[arg-type]
        self._fs_and_root  # noqa: B018  (a missing backend is reported here as a UserError)
        return FsspecStore.from_url(self.url, storage_options=dict(self.storage_options), read_only=read_only)

    def exists(self, key: str = "") -> bool:
        return bool(self.fs.exists(self.key(key)))

    def has_content(self) -> bool:
        """True when something (anything) is stored under the root."""
        if self.is_local:
            path = Path(self.local_path)  # type: ignore[arg-type]
            return path.exists() and (not path.is_dir() or any(path.iterdir()))
        try:
            return bool(self.fs.ls(self.root, detail=False))
        except FileNotFoundError:
            return False

    def remove(self) -> None:
        """Delete everything under the root."""
        if self.is_local:
            import shutil

            shutil.rmtree(self.local_path, ignore_errors=True)  # type: ignore[arg-type]
            return
        if self.has_content():
            self.fs.rm(self.root, recursive=True)

    def check_container(self) -> None:
        """Refuse, in one line, a URL whose bucket does not exist or cannot be reached."""
        if self.is_local:
            return
        bucket = self.root.split("/", 1)[0]
        try:
            found = self.fs.exists(bucket)
        except Exception as exc:  # noqa: BLE001  (each backend raises its own connection errors)
            raise UserError(f"{self.url}: cannot reach the storage ({type(exc).__name__}: {exc})") from None
        if not found:
            raise UserError(f"{self.url}: bucket {bucket!r} does not exist (or these credentials cannot see it)")

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if it does not exist: True for the one writer that created it.

        The object appears whole or not at all. Local disk: write a temporary file, then
        ``link`` it to its name (fails if the name exists). S3: a PUT with ``If-None-Match: *``
        (the server refuses it when the key exists). Backends without a conditional write are
        refused rather than raced.
        """
        if self.is_local:
            path = Path(self.local_path) / key  # type: ignore[arg-type]
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
            tmp.write_bytes(data)
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)
        if not _has_conditional_write(self.fs):
            raise UserError(f"{self.url}: this storage backend ({type(self.fs).__name__}) has no conditional "
                            "write (create-if-absent), which emostore needs to create feature sets safely "
                            "without locks")
        try:
            self.fs.pipe_file(self.key(key), data, mode="create")
            return True
        except FileExistsError:
            return False


def _has_conditional_write(fs: Any) -> bool:
    """Whether the filesystem's own upload takes ``mode="create"`` (s3fs does: ``If-None-Match: *``);
    one that would silently ignore it must not be trusted with creation."""
    import inspect

    upload = getattr(fs, "_pipe_file", None) or getattr(fs, "pipe_file", None)
    try:
        return "mode" in inspect.signature(upload).parameters
    except (TypeError, ValueError):
        return False
