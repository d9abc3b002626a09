"""Training a small head on a store, for the serving tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from emostore.heads import checkpoint as ckpt_io
from emostore.heads.data import load_data
from emostore.heads.train import TrainConfig, fit


def train(store, head: str, out, features=("text/minilm",), **params):
    data = load_data(store, list(features), "emotion")
    result = fit(data, head, params, TrainConfig(epochs=8, patience=3, device="cpu"))
    return ckpt_io.save(result, data, out, store=store), data, result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on 127.0.0.1 (a free port) in a thread; yields its URL."""
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
