"""Prediction API and HTTP server: real checkpoints on the sample, limits, fuzzing on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest

fastapi = pytest.importorskip("fastapi", reason="the serve extra is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from emostore.errors import UserError  # noqa: E402
from emostore.heads import checkpoint as ckpt_io  # noqa: E402
from emostore.heads.data import load_data  # noqa: E402
from emostore.heads.train import TrainConfig, fit, predict_rows  # noqa: E402
from emostore.serve.app import Limits, create_app  # noqa: E402
from emostore.serve.predictor import Conversation, Predictor  # noqa: E402

LIMITS = Limits(max_text_chars=300, max_upload_bytes=64 * 1024, max_turns=4, max_conversations=3)


def train(store, head: str, out, **params):
    data = load_data(store, ["text/minilm"], "emotion")
    result = fit(data, head, params, TrainConfig(epochs=8, patience=3, device="cpu"))
    return ckpt_io.save(result, data, out, store=store), data, result


@pytest.fixture(scope="module")
def mlp(sample_store, tmp_path_factory):
    return train(sample_store, "mlp", tmp_path_factory.mktemp("ck") / "mlp")


@pytest.fixture(scope="module")
def causal(sample_store, tmp_path_factory):
    return train(sample_store, "context", tmp_path_factory.mktemp("ck") / "ctx", causal=True, hidden=64)


def test_predict_equals_the_head_on_stored_features(mlp, sample_store):
    path, data, result = mlp
    pred = Predictor(path, device="cpu")
    t = sample_store.table
    row = int(np.flatnonzero(t["id"] == "d052_u01")[0])
    out = pred.predict(text=t["text"].iat[row])
    ref = predict_rows(result.model.cpu(), data.to("cpu"), np.array([row]))[0].softmax(-1).numpy()
    labels = data.target.labels
    assert out["label"] == labels[int(ref.argmax())]
    for label, p in out["probabilities"].items():
        assert p == pytest.approx(float(ref[labels.index(label)]), abs=1e-3)
    assert out["modalities"] == {"text/minilm": {"present": True}}


def test_missing_modality_masked_and_bad_input(mlp, tmp_path):
    pred = Predictor(mlp[0], device="cpu")
    with pytest.raises(UserError, match="nothing to predict"):
        pred.predict(text="   ")
    with pytest.raises(UserError, match="does not exist"):
        pred.predict(text="hi", audio=tmp_path / "missing.wav")
    image = tmp_path / "face.jpg"
    image.write_bytes(b"\xff\xd8\xff")
    with pytest.raises(UserError, match="no modality of this checkpoint"):
        pred.predict(image=image)  # a text-only checkpoint: the text feature set is masked


def test_causal_conversation_turns_do_not_change_the_past(causal):
    pred = Predictor(causal[0], device="cpu")
    conv = Conversation()
    a = pred.add_turn(conv, 10, text="I got the job!", speaker="Ann")
    b = pred.add_turn(conv, 10, text="That's amazing, congratulations!", speaker="Ben")
    assert a["turn"] == 0 and b["turn"] == 1 and a["causal"] is True
    again = pred._outputs(conv.turns)[0].softmax(-1).numpy()
    assert max(again) == pytest.approx(max(a["probabilities"].values()), abs=1e-3)
    for _ in range(5):
        pred.add_turn(conv, 3, text="Okay.", speaker="Ann")
    assert len(conv.turns) == 3


@pytest.fixture(scope="module")
def client(causal):
    return TestClient(create_app(Predictor(causal[0], device="cpu"), LIMITS))


def test_http_endpoints_and_limits(client, tmp_path):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["head"] == "context" and h["feature_sets"] == ["text/minilm"]
    r = client.post("/predict", json={"text": "This is disgusting, take it away."})
    assert r.status_code == 200 and r.json()["label"] in h["labels"]
    r = client.post("/predict", data={"text": "What a lovely surprise!"})
    assert r.status_code == 200
    for turn, who in [("Hi, how was the trip?", "Ann"), ("Terrible, they lost my luggage.", "Ben")]:
        r = client.post("/conversations/c1/turns", json={"text": turn, "speaker": who})
        assert r.status_code == 200
    assert r.json()["turn"] == 1 and r.json()["conversation"] == "c1"
    assert client.delete("/conversations/c1").status_code == 200
    assert client.delete("/conversations/c1").status_code == 404
    cases = [
        (client.post("/predict", json={"text": "x" * 301}), 413),
        (client.post("/predict", json={"text": ""}), 422),
        (client.post("/predict", json={"txt": "hello"}), 422),
        (client.post("/predict", content=b"{not json", headers={"content-type": "application/json"}), 422),
        (client.post("/predict", content=b"hello", headers={"content-type": "text/plain"}), 415),
        (client.post("/predict", files={"file": ("notes.pdf", b"%PDF", "application/pdf")}), 415),
        (client.post("/predict", files={"file": ("big.wav", b"\0" * (64 * 1024 + 1), "audio/wav")}), 413),
        (client.post("/predict", files={"file": ("empty.wav", b"", "audio/wav")}), 422),
        (client.post("/predict", files={"file": ("broken.wav", b"RIFF1234garbage", "audio/wav")}), 422),
        (client.post("/conversations/bad id!/turns", json={"text": "hi"}), 422),
    ]
    for response, status in cases:
        assert response.status_code == status, response.text
        assert "detail" in response.json()
    for i in range(5):
        client.post(f"/conversations/k{i}/turns", json={"text": "hello"})
    assert client.get("/health").json()["conversations"] == 3


@pytest.fixture(scope="module")
def server(causal):
    """The app served by uvicorn on 127.0.0.1 (a free port), stopped after the module."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(Predictor(causal[0], device="cpu"), LIMITS), host="127.0.0.1",
                            port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def test_schemathesis_finds_no_server_error(server):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    ops = list(schema.get_all_operations())
    assert len(ops) >= 4
    failures, calls = [], []
    for result in ops:
        operation = result.ok()

        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), derandomize=True)
        @given(case=operation.as_strategy())
        def check(case):  # type: ignore[no-untyped-def]
            response = case.call(base_url=server, timeout=60)
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append((case.method, case.path, response.status_code, response.text[:200]))
            case.validate_response(response, checks=[not_a_server_error])

        check()
    assert not failures
    assert len(calls) >= 40 and any(c == 200 for c in calls) and any(400 <= c < 500 for c in calls)


def test_openapi_documents_both_bodies(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert json.dumps(spec)  # serialisable


def test_predict_on_real_meld_text(tmp_path_factory, minilm_encoder):
    """A checkpoint trained on real MELD text (a subset of dialogues) predicts new utterances."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "heads"))
    from heads_stores import meld_store

    store = meld_store(tmp_path_factory, minilm_encoder)
    path, _, _ = train(store, "mlp", tmp_path_factory.mktemp("ck") / "meld")
    pred = Predictor(path, device="cpu")
    out = pred.predict(text="Oh my God! You guys are getting married?!")
    assert set(out["probabilities"]) == {"anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"}
    assert sum(out["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)


def test_predict_with_text_and_audio(tmp_path):
    """A text + audio checkpoint (the sample's speech clips): audio from a file or a video's
    soundtrack is encoded like the store; without audio that modality is masked."""
    pytest.importorskip("opensmile", reason="the audio extra is not installed")
    from emostore.demo import sample_with_media
    from emostore.extract.encoders.opensmile import OpenSmileEncoder
    from emostore.extract.runner import run_extraction
    from emostore.extract.encoders.text import text_encoder
    from emostore.ingest.run import ingest
    from emostore.sample.clips import HERE

    store, _ = ingest("csv", [sample_with_media(tmp_path)], tmp_path / "store", dataset="sample")
    run_extraction(store, text_encoder("minilm", device="cpu"), progress=False)
    run_extraction(store, OpenSmileEncoder.create(feature_set="egemaps"), progress=False)
    data = load_data(store, ["text/minilm", "audio/egemaps"], "emotion")
    result = fit(data, "mlp", {}, TrainConfig(epochs=5, modality_dropout=0.3, device="cpu"))
    path = ckpt_io.save(result, data, tmp_path / "ckpt", store=store)
    pred = Predictor(path, device="cpu")
    both = pred.predict(text="I can't believe it!", audio=HERE / "media" / "d001_u00.flac")
    assert both["modalities"] == {"text/minilm": {"present": True}, "audio/egemaps": {"present": True}}
    clip = tmp_path / "media" / "d001_u00.mp4"
    video = pred.predict(text="I can't believe it!", video=clip)
    assert video["modalities"]["audio/egemaps"]["present"]
    np.testing.assert_allclose(  # the clip's soundtrack is the same speech (AAC-coded)
        pred.encode(video=clip).raw["audio/egemaps"][:5],
        store.read("audio/egemaps")[1][list(store.ids).index("d001_u00")][:5], rtol=1e-3, atol=1e-3)
    text_only = pred.predict(text="I can't believe it!")
    assert text_only["modalities"]["audio/egemaps"] == {"present": False, "reason": "no audio or video given"}
    assert text_only["probabilities"] != both["probabilities"]
