"""Dask clusters for extraction and index builds: ``--cluster tcp://host:8786`` or ``--cluster local:N``.

``local:N`` starts a LocalCluster of N worker processes (one thread each) on this machine and
stops it afterwards; any other address is an existing dask.distributed scheduler, whose workers
must have emostore installed and reach the store (and the media) at the same path or URL.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from emostore.errors import UserError

#: A task whose worker died is rescheduled elsewhere up to this many times (the scheduler's
#: ``allowed-failures``, set here for local clusters); ``RETRIES`` is for tasks that raise.
ALLOWED_FAILURES = 5
RETRIES = 2


def require_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise UserError("--cluster needs dask.distributed: pip install 'emostore[cluster]'") from None
    return distributed


def parse_local(address: str) -> int | None:
    """N for ``local:N``; None for a scheduler address."""
    m = re.fullmatch(r"local:(\d+)", address.strip())
    if m is None:
        if address.strip().startswith("local:"):
            raise UserError(f"--cluster {address!r}: write local:N (N worker processes), e.g. local:4")
        return None
    n = int(m.group(1))
    if n < 1:
        raise UserError("--cluster local:N needs N >= 1")
    return n


#: Where a local cluster's dashboard listens: this machine only, unless asked otherwise.
DASHBOARD = "127.0.0.1:8787"
_dashboard: ContextVar[str | None] = ContextVar("dashboard_address", default=None)


@contextmanager
def dashboard_at(address: str | None) -> Iterator[None]:
    """Local clusters started within the block put their dashboard at ``address`` (``--dashboard-address``)."""
    token = _dashboard.set(address)
    try:
        yield
    finally:
        _dashboard.reset(token)


@contextmanager
def connect(cluster: Any, *, quiet: bool = False, dashboard_address: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``cluster``: a Client (used as is), ``local:N`` or an address.
    A local cluster's scheduler and dashboard bind to 127.0.0.1 (``dashboard_address`` to change
    the dashboard's, e.g. ``0.0.0.0:8787`` to reach it from other machines)."""
    distributed = require_distributed()
    if isinstance(cluster, distributed.Client):
        yield cluster
        return
    import dask

    n = parse_local(str(cluster))
    local = None
    try:
        if n is not None:
            with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
                local = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                 silence_logs=logging.ERROR, host="127.0.0.1",
                                                 dashboard_address=dashboard_address or _dashboard.get()
                                                 or DASHBOARD)
            client = distributed.Client(local)
        else:
            try:
                client = distributed.Client(str(cluster), timeout="30s")
            except (OSError, TimeoutError) as exc:
                raise UserError(f"--cluster {cluster}: cannot reach the scheduler ({exc})") from None
    except BaseException:
        if local is not None:
            local.close()
        raise
    try:
        if not quiet:
            workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
            print(f"cluster {client.scheduler.address}: {workers} workers; dashboard {client.dashboard_link}",
                  file=sys.stderr, flush=True)
        yield client
    finally:
        client.close()
        if local is not None:
            local.close()
