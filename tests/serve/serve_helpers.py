"""What the serving tests share: small checkpoints trained once per session on the bundled
sample, and a server on loopback. (A module, not a conftest: other tests import ``conftest``.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from emostore.heads import checkpoint as ckpt_io
from emostore.heads.data import load_data
from emostore.heads.train import TrainConfig, fit

_made: dict[str, Any] = {}


def once(key: str, make: Callable[[], Any]) -> Any:
    """``make()`` the first time in this session, the same object afterwards."""
    if key not in _made:
        _made[key] = make()
    return _made[key]


def train(store, head: str, out, features=("text/minilm",), **params):
    data = load_data(store, list(features), "emotion")
    result = fit(data, head, params, TrainConfig(epochs=8, patience=3, device="cpu"))
    return ckpt_io.save(result, data, out, store=store), data, result


def mlp(sample_store, tmp_path_factory):
    return once("mlp", lambda: train(sample_store, "mlp", tmp_path_factory.mktemp("ck") / "mlp"))


def causal(sample_store, tmp_path_factory):
    return once("causal", lambda: train(sample_store, "context", tmp_path_factory.mktemp("ck") / "ctx",
                                        causal=True, hidden=64))


def text_audio(tmp_path_factory, minilm_encoder):
    """An ``mlp`` on text/minilm + audio/egemaps of the sample with its media clips (speech + face video)."""

    def make() -> SimpleNamespace:
        from emostore.extract.encoders.opensmile import OpenSmileEncoder
        from emostore.extract.runner import run_extraction
        from emostore.ingest.run import ingest
        from emostore.ingest.sample import SAMPLE

        work = tmp_path_factory.mktemp("av")
        store, _ = ingest("sample", SAMPLE, work / "store", clips=work / "media")
        run_extraction(store, minilm_encoder, progress=False)
        run_extraction(store, OpenSmileEncoder.create(feature_set="egemaps"), progress=False)
        data = load_data(store, ["text/minilm", "audio/egemaps"], "emotion")
        result = fit(data, "mlp", {}, TrainConfig(epochs=5, modality_dropout=0.3, device="cpu"))
        path = ckpt_io.save(result, data, work / "ckpt", store=store)
        return SimpleNamespace(path=path, store=store, media=work / "media")

    return once("text_audio", make)


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


def egemaps_text(audio_sample_store, tmp_path_factory):
    """An ``mlp`` on text/minilm + audio/egemaps of the sample's speech files (the real-time checkpoint)."""

    def make():
        data = load_data(audio_sample_store, ["text/minilm", "audio/egemaps"], "emotion")
        result = fit(data, "mlp", {}, TrainConfig(epochs=8, modality_dropout=0.3, device="cpu"))
        return ckpt_io.save(result, data, tmp_path_factory.mktemp("ck") / "egemaps_text", store=audio_sample_store)

    return once("egemaps_text", make)


@contextmanager
def serve_process(ckpt: Path, *args: str, tmp: Path | None = None) -> Iterator[str]:
    """``emostore serve CKPT ARGS`` in a subprocess on a free loopback port (``TMPDIR=tmp``); yields its URL."""
    import httpx

    root = Path(__file__).resolve().parents[2]
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(root), **({"TMPDIR": str(tmp)} if tmp else {})}
    proc = subprocess.Popen([sys.executable, "-m", "emostore.cli", "serve", str(ckpt), "--port", str(port),
                             "--device", "cpu", *args], cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def realtime_server(request, audio_sample_store, tmp_path_factory) -> tuple[str, Path]:
    """One ``emostore serve`` of :func:`egemaps_text` shared by this session's real-time tests
    (``--max-streams 2 --max-stream-rate 20``, its own TMPDIR), stopped when the session ends: (URL, TMPDIR)."""

    def make() -> tuple[str, Path]:
        ckpt = egemaps_text(audio_sample_store, tmp_path_factory)
        tmp = tmp_path_factory.mktemp("server_tmp")
        server = serve_process(ckpt, "--max-streams", "2", "--max-stream-rate", "20", tmp=tmp)
        url = server.__enter__()
        request.config.add_cleanup(lambda: server.__exit__(None, None, None))
        return url, tmp

    return once("realtime_server", make)
