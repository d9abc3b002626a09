"""The server under refused, failing and abandoned requests: temporary uploads removed on every
path (413, 415, 422, 500, client gone), bodies capped while they arrive, no server path in any
message. The temporary folder's files are counted before and after."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from conftest import optional

optional("fastapi", "serve")
import httpx  # noqa: E402
import serve_helpers as helpers  # noqa: E402
from serve_helpers import serve_in_thread  # noqa: E402

from emostore.serve.app import Limits, create_app  # noqa: E402
from emostore.serve.predictor import Predictor  # noqa: E402


@pytest.fixture(scope="module")
def mlp(sample_store, tmp_path_factory):
    return helpers.mlp(sample_store, tmp_path_factory)


@pytest.fixture()
def temp_folder(tmp_path, monkeypatch) -> Path:
    """A temporary folder of its own for the server's uploads (and the multipart parser's)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def wav_bytes(seconds: float = 1.0, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.sin(np.arange(int(seconds * rate)) / 20) * 8000).astype("<i2").tobytes())
    return buf.getvalue()


def test_refused_and_failed_requests_leave_no_file_and_no_server_path(mlp, temp_folder):
    ckpt, _, _ = mlp
    limits = Limits(max_text_chars=100, max_upload_bytes=2 << 20)
    app = create_app(Predictor(ckpt, device="cpu"), limits)
    before = set(os.listdir(temp_folder))
    big = wav_bytes(30.0)  # ~1 MB
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        statuses = []
        for _ in range(10):  # a long text beside a 1 MB upload: 413, the upload removed
            r = client.post("/predict", data={"text": "x" * 500}, files={"file": ("talk.wav", big)})
            statuses.append(r.status_code)
        assert statuses == [413] * 10
        assert client.post("/predict", files={"file": ("talk.exe", b"MZ")}).status_code == 415
        assert client.post("/predict", files={"file": ("talk.wav", b"")}).status_code == 422
        r = client.post("/predict", files={"file": ("broken.wav", b"RIFF not really a wave file" * 100)})
        assert r.status_code == 422, r.text
        assert str(temp_folder) not in r.text and tempfile.gettempdir() not in r.text, r.text
        r = client.post("/predict", data={"text": "hi"}, files={"file": ("talk.wav", wav_bytes(3 * 64))})
        assert r.status_code == 413  # a 6 MB upload over a 2 MB limit
        r = client.post("/predict", content=b"{" + b" " * (5 << 20) + b"}", headers={"content-type":
                                                                                    "application/json"})
        assert r.status_code == 413 and "request body larger than" in r.text
        # a server error (a bug in an encoder): 500, and still no file left
        original = app.state.engine.submit

        def broken(job):
            if job.inputs is not None and job.inputs.audio is not None:
                raise RuntimeError("encoder bug")
            return original(job)

        app.state.engine.submit = broken
        try:
            r = client.post("/predict", files={"file": ("talk.wav", wav_bytes(1.0))})
        finally:
            app.state.engine.submit = original
        assert r.status_code == 500
    assert set(os.listdir(temp_folder)) == before


def test_a_body_is_capped_while_it_arrives_and_an_abandoned_upload_is_removed(mlp, temp_folder):
    ckpt, _, _ = mlp
    app = create_app(Predictor(ckpt, device="cpu"), Limits(max_text_chars=100, max_upload_bytes=1 << 20))
    before = set(os.listdir(temp_folder))
    with serve_in_thread(app) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as s:  # 50 MB of JSON, chunked, no Content-Length
            s.sendall(f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n".encode())
            s.settimeout(0.2)
            answer, sent = b"", 0
            while sent < 50 and not answer:
                s.sendall(f"{1 << 20:x}\r\n".encode() + b" " * (1 << 20) + b"\r\n")
                sent += 1
                with contextlib.suppress(TimeoutError):
                    answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 413") and sent <= 3, (sent, answer[:200])
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as s:  # a client that goes away mid-upload
            boundary = "b0undary"
            head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"talk.wav\"\r\n"
                    "Content-Type: audio/wav\r\n\r\n").encode()
            s.sendall(f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary="
                      f"{boundary}\r\nContent-Length: {900_000}\r\n\r\n".encode() + head + wav_bytes(10.0)[:400_000])
        time.sleep(1.0)
        assert httpx.get(f"{url}/health").status_code == 200
    assert set(os.listdir(temp_folder)) == before
