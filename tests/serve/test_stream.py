"""``/stream`` over a real WebSocket to a real ``emostore serve`` process, fed the sample's speech clips."""

from __future__ import annotations

import contextlib
import io
import json
import time

import httpx
import numpy as np
import pytest
import serve_helpers as helpers
from conftest import optional

from emostore.sample.clips import joined_recording, speech_clips

optional("silero_vad", "audio")
sf = optional("soundfile", "audio")
ws_client = optional("websockets.sync.client", "serve")
pytestmark = pytest.mark.slow
RATE = 16000


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """Four clips with known silences: 16-bit samples, and where each clip's speech lies (seconds)."""
    path = tmp_path_factory.mktemp("rec") / "four.wav"
    truth = joined_recording(path, speech_clips()[:4], [1.2, 1.6, 1.0, 1.5])
    return sf.read(str(path), dtype="int16")[0], truth


@pytest.fixture(scope="module")
def server(request, audio_sample_store, tmp_path_factory):
    return helpers.realtime_server(request, audio_sample_store, tmp_path_factory)


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/stream"


def send_audio(ws, pcm: np.ndarray, *, rate: int = RATE, speed: float = 10.0, chunk_s: float = 0.1) -> None:
    """Send ``pcm`` in ``chunk_s`` frames at ``speed`` times real time."""
    step = int(chunk_s * rate)
    t0 = time.perf_counter()
    for i in range(0, len(pcm), step):
        ws.send(pcm[i:i + step].tobytes())
        wait = t0 + (i + step) / rate / speed - time.perf_counter()
        if wait > 0:
            time.sleep(wait)


def receive_all(ws, timeout: float = 60) -> tuple[list[dict], int | None, str | None]:
    """Every server message until the server closes: (messages, close code, close reason)."""
    from websockets.exceptions import ConnectionClosed

    out = []
    try:
        while True:
            out.append(json.loads(ws.recv(timeout=timeout)))
    except ConnectionClosed as exc:
        rcvd = exc.rcvd
        return out, rcvd.code if rcvd else None, rcvd.reason if rcvd else None


def predict_span(url: str, pcm: np.ndarray, start: float, end: float, text: str | None = None) -> dict:
    buf = io.BytesIO()
    sf.write(buf, pcm[round(start * RATE):round(end * RATE)], RATE, format="WAV", subtype="PCM_16")
    r = httpx.post(f"{url}/predict", files={"file": ("span.wav", buf.getvalue(), "audio/wav")},
                   data={"text": text} if text else None, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_segments_match_predict_on_the_same_audio(server, recording):
    url, _ = server
    pcm, truth = recording
    said = "I told you it would work!"
    with ws_client.connect(ws_url(url)) as ws:
        ws.send(json.dumps({"sample_rate": RATE, "encoding": "pcm_s16le", "channels": 1, "partial_every_s": 1.0}))
        ws.send(json.dumps({"type": "text", "text": said, "start": truth[1][0], "end": truth[1][1]}))
        send_audio(ws, pcm)
        ws.send(json.dumps({"type": "end"}))
        msgs, code, reason = receive_all(ws)
    assert (code, reason) == (1000, "done")
    segs = [m for m in msgs if m["type"] == "segment"]
    assert msgs[-1] == {"type": "done", "segments": len(truth)} and len(segs) == len(truth)
    assert [m["id"] for m in segs] == list(range(len(truth)))
    assert any(m["type"] == "partial" for m in msgs)
    for m, (a, b) in zip(segs, truth):
        assert abs(m["start"] - a) <= 0.25 and abs(m["end"] - b) <= 0.25, (m["start"], m["end"], a, b)
        text = said if m["id"] == 1 else None
        assert m["modalities"] == (["text", "audio"] if text else ["audio"])
        alone = predict_span(url, pcm, m["start"], m["end"], text)
        assert (m["label"], m["probabilities"]) == (alone["label"], alone["probabilities"])


def test_other_rates_and_float_stereo_give_the_same_segments(server, recording):
    import soxr

    url, _ = server
    pcm, truth = recording
    x = soxr.resample(pcm.astype(np.float32) / 32768, RATE, 48000)
    stereo = np.stack([x, x], axis=1).astype("<f4")
    with ws_client.connect(ws_url(url)) as ws:
        ws.send(json.dumps({"sample_rate": 48000, "encoding": "f32le", "channels": 2}))
        send_audio(ws, stereo, rate=48000)
        ws.send(json.dumps({"type": "end"}))
        msgs, code, _ = receive_all(ws)
    segs = [m for m in msgs if m["type"] == "segment"]
    assert code == 1000 and len(segs) == len(truth)
    for m, (a, b) in zip(segs, truth):
        assert abs(m["start"] - a) <= 0.25 and abs(m["end"] - b) <= 0.25


def closed_with(url: str, *messages) -> tuple[list[dict], int | None, str | None]:
    from websockets.exceptions import ConnectionClosed

    with ws_client.connect(ws_url(url)) as ws:
        try:
            for m in messages:
                ws.send(m)
        except ConnectionClosed:
            pass  # closed by the server already: receive_all reads why
        return receive_all(ws, timeout=30)


def test_misuse_closes_with_a_code_and_a_reason(server, recording):
    url, _ = server
    pcm, _ = recording
    _, code, reason = closed_with(url, "hello")
    assert code == 1007 and reason.startswith("bad config message")
    _, code, reason = closed_with(url, json.dumps({"sample_rate": 12345}))
    assert code == 1007 and "unsupported sample_rate 12345" in reason
    _, code, reason = closed_with(url, json.dumps({"sample_rate": 16000, "volume": 3}))
    assert code == 1007 and "volume" in reason
    _, code, reason = closed_with(url, pcm[:1600].tobytes())
    assert code == 1002 and "before the config" in reason
    cfg = json.dumps({"sample_rate": 16000})
    _, code, reason = closed_with(url, cfg, *[pcm[i:i + 16000].tobytes() for i in range(0, len(pcm), 16000)])
    assert code == 1008 and "faster than 20x real time" in reason
    # a bad message later on is answered with an error, and the stream goes on
    msgs, code, _ = closed_with(url, cfg, json.dumps({"type": "dance"}), "{not json",
                                json.dumps({"type": "text", "text": "hi", "start": 2.0, "end": 1.0}),
                                json.dumps({"type": "frame", "t": 0.5, "jpeg": "AAAA"}), pcm[:8000].tobytes(),
                                json.dumps({"type": "end"}))
    errors = [m["message"] for m in msgs if m["type"] == "error"]
    assert code == 1000 and msgs[-1] == {"type": "done", "segments": 0}
    assert "unknown message type 'dance'" in errors[0] and "JSON object" in errors[1]
    assert "before start" in errors[2] and "no visual feature set" in errors[3]


def open_streams(url: str) -> int:
    return httpx.get(f"{url}/health").json()["streams"]["open"]


def wait_for(check, timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_max_streams_and_disconnects_free_everything(server, recording):
    url, tmp = server
    pcm, truth = recording
    cfg = json.dumps({"sample_rate": RATE})
    with contextlib.ExitStack() as stack:
        first, second = (stack.enter_context(ws_client.connect(ws_url(url))) for _ in range(2))
        for ws in (first, second):
            ws.send(cfg)
        run_two(url, tmp, pcm, truth, cfg, first, second)
    assert wait_for(lambda: open_streams(url) == 0)
    assert wait_for(lambda: not list(tmp.glob("emostore-streams-*/*")))


def run_two(url, tmp, pcm, truth, cfg, first, second) -> None:
    end_of_two = int((truth[1][1] + 1.2) * RATE)
    send_audio(first, pcm[:end_of_two], speed=15)
    send_audio(second, pcm[:int((truth[0][0] + 1.0) * RATE)], speed=15)  # stops in the middle of a clip
    assert open_streams(url) == 2
    _, code, reason = closed_with(url, cfg)
    assert code == 1013 and "server full: 2 streams open" in reason
    folders = list(tmp.glob("emostore-streams-*/*"))
    assert len(folders) == 2  # one working folder per open stream
    second.socket.close()  # gone mid-speech, without a goodbye
    assert wait_for(lambda: open_streams(url) == 1)
    assert wait_for(lambda: len(list(tmp.glob("emostore-streams-*/*"))) == 1)
    msgs, code, _ = closed_with(url, cfg, pcm[:RATE].tobytes(), json.dumps({"type": "end"}))  # a place is free
    assert code == 1000 and msgs[-1]["type"] == "done"
    first.send(json.dumps({"type": "end"}))
    msgs, code, _ = receive_all(first)
    assert code == 1000 and [m["id"] for m in msgs if m["type"] == "segment"] == [0, 1]
