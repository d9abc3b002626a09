"""Prediction API and HTTP server: real checkpoints on the sample, limits, fuzzing on loopback."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import optional

fastapi = optional("fastapi", "serve")

import serve_helpers as helpers
from fastapi.testclient import TestClient
from serve_helpers import serve_in_thread, train

from emostore.errors import UserError
from emostore.heads.train import predict_rows
from emostore.serve.app import Limits, create_app
from emostore.serve.predictor import Conversation, Predictor

LIMITS = Limits(max_text_chars=300, max_upload_bytes=64 * 1024, max_turns=4, max_conversations=3)


@pytest.fixture(scope="module")
def mlp(sample_store, tmp_path_factory):
    return helpers.mlp(sample_store, tmp_path_factory)


@pytest.fixture(scope="module")
def causal(sample_store, tmp_path_factory):
    return helpers.causal(sample_store, tmp_path_factory)


@pytest.fixture(scope="module")
def text_audio(tmp_path_factory, minilm_encoder):
    optional("opensmile", "audio")
    return helpers.text_audio(tmp_path_factory, minilm_encoder)


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
    """A causal context head's answer for a turn, whole distribution, stays the same once later turns come."""
    pred = Predictor(causal[0], device="cpu")
    labels = causal[1].target.labels
    conv = Conversation()
    said = [("I got the job!", "Ann"), ("That's amazing, congratulations!", "Ben"), ("Thanks, I'm so relieved.", "Ann")]
    answers = [pred.add_turn(conv, 10, text=t, speaker=who) for t, who in said]
    assert [a["turn"] for a in answers] == [0, 1, 2] and answers[0]["causal"] is True
    again = pred._outputs(conv.turns).softmax(-1).numpy()  # every turn, recomputed with all three present
    for i, a in enumerate(answers):
        np.testing.assert_allclose([a["probabilities"][lab] for lab in labels], again[i], atol=1e-3)
    for _ in range(5):
        pred.add_turn(conv, 3, text="Okay.", speaker="Ann")
    assert len(conv.turns) == 3


def test_non_causal_context_head_revises_the_past(sample_store, tmp_path):
    """The check above can fail: a bidirectional context head's answer for turn 0 moves once turn 1 exists."""
    path, data, _ = train(sample_store, "context", tmp_path / "bi", causal=False, hidden=64)
    pred = Predictor(path, device="cpu")
    conv = Conversation()
    first = pred.add_turn(conv, 10, text="I got the job!", speaker="Ann")
    assert first["causal"] is False
    pred.add_turn(conv, 10, text="No way, that's awful news.", speaker="Ben")
    again = pred._outputs(conv.turns).softmax(-1).numpy()[0]
    before = np.array([first["probabilities"][lab] for lab in data.target.labels])
    assert np.abs(again - before).max() > 1e-3


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
        (client.post("/predict", content=b'{"text": "half a pair \\ud800"}',
                     headers={"content-type": "application/json"}), 422),
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
    with serve_in_thread(create_app(Predictor(causal[0], device="cpu"), LIMITS)) as url:
        yield url


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
    assert body["application/json"]["schema"]["properties"]["text"]["type"] == "string"
    multipart = body["multipart/form-data"]["schema"]["properties"]
    assert multipart["file"] == {"type": "string", "format": "binary", "description": "An audio, video or image file."}
    turns = spec["paths"]["/conversations/{conversation_id}/turns"]["post"]["requestBody"]["content"]
    assert {"text", "speaker", "file"} <= set(turns["multipart/form-data"]["schema"]["properties"])
    assert set(spec["paths"]) == {"/health", "/predict", "/conversations/{conversation_id}/turns",
                                  "/conversations/{conversation_id}", "/timeline"}
    timeline = spec["paths"]["/timeline"]["post"]["requestBody"]["content"]
    assert set(timeline) == {"multipart/form-data"}
    assert timeline["multipart/form-data"]["schema"]["required"] == ["file"]
    assert json.loads(json.dumps(spec)) == spec  # plain JSON: no bytes or exceptions inside


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


def test_predict_with_text_and_audio(text_audio):
    """A text + audio checkpoint (the sample's speech clips): audio from a file or a video's
    soundtrack is encoded like the store; without audio that modality is masked."""
    from emostore.sample.clips import HERE

    pred = Predictor(text_audio.path, device="cpu")
    store = text_audio.store
    both = pred.predict(text="I can't believe it!", audio=HERE / "media" / "d001_u00.flac")
    assert both["modalities"] == {"text/minilm": {"present": True}, "audio/egemaps": {"present": True}}
    assert "unused_inputs" not in both
    clip = text_audio.media / "d001_u00.mp4"
    video = pred.predict(text="I can't believe it!", video=clip)
    assert video["modalities"]["audio/egemaps"]["present"]
    assert video["unused_inputs"] == {"video": "its frames: not used (the checkpoint has no visual feature set)"}
    np.testing.assert_allclose(  # the clip's soundtrack is the same speech (AAC-coded)
        pred.encode(video=clip).raw["audio/egemaps"][:5],
        store.read("audio/egemaps")[1][list(store.ids).index("d001_u00")][:5], rtol=1e-3, atol=1e-3)
    text_only = pred.predict(text="I can't believe it!")
    assert text_only["modalities"]["audio/egemaps"] == {"present": False, "reason": "no audio or video given"}
    assert text_only["probabilities"] != both["probabilities"]
    two = pred.predict(text="I can't believe it!", audio=HERE / "media" / "d001_u00.flac", video=clip)
    assert two["unused_inputs"] == {"video": "not used: the audio input feeds audio; "
                                             "the checkpoint has no visual feature set"}
    assert two["probabilities"] == both["probabilities"]


def test_inputs_a_checkpoint_does_not_use_are_reported(mlp):
    """`predict` on a text-only checkpoint with --audio says the audio is not used (result and CLI)."""
    from typer.testing import CliRunner

    from emostore.cli import app
    from emostore.sample.clips import HERE

    flac = HERE / "media" / "d001_u00.flac"
    out = Predictor(mlp[0], device="cpu").predict(text="I can't believe it!", audio=flac)
    assert out["unused_inputs"] == {"audio": "not used: the checkpoint has no audio feature set"}
    assert out["modalities"] == {"text/minilm": {"present": True}}
    runner = CliRunner()
    r = runner.invoke(app, ["predict", str(mlp[0]), "--text", "I can't believe it!", "--audio", str(flac),
                            "--device", "cpu"], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "warning: --audio not used: the checkpoint has no audio feature set" in r.stderr
    assert "not used" not in r.stdout  # stdout holds the prediction only
    r = runner.invoke(app, ["predict", str(mlp[0]), "--text", "I can't believe it!", "--audio", str(flac),
                            "--device", "cpu", "--json"])
    assert r.exit_code == 0
    assert "warning: --audio not used" in r.stderr
    assert json.loads(r.stdout)["unused_inputs"] == {"audio": "not used: the checkpoint has no audio feature set"}


@pytest.mark.parametrize("head", ["sequence", "svm"])
def test_frame_and_classical_heads_from_audio_video_and_http(audio_sample_store, tmp_path, head):
    """A sequence head on the sample's LLD frames + text, and an SVM on text + eGeMAPS: predict
    encodes a new utterance's audio (frames included) exactly as the store holds it, from an
    audio file, from a video's soundtrack and through the HTTP API."""
    import torch

    from emostore.heads import checkpoint as ckpt_io
    from emostore.heads.data import load_data
    from emostore.heads.train import TrainConfig, fit
    from emostore.sample.clips import photo, write_clip

    store = audio_sample_store
    features = ["audio/egemaps-lld" if head == "sequence" else "audio/egemaps", "text/minilm"]
    data = load_data(store, features, "emotion", frames=head == "sequence")
    params = {"hidden": 32, "max_frames": 300} if head == "sequence" else {"kernel": "rbf"}
    result = fit(data, head, params, TrainConfig(epochs=3, device="cpu"))
    path = ckpt_io.save(result, data, tmp_path / head, store=store)
    table = store.table
    row = int(np.flatnonzero(table["media"].notna().to_numpy() & (table["split"] == "test").to_numpy())[0])
    audio, text = table["media"].iat[row], table["text"].iat[row]
    ref = torch.softmax(predict_rows(result.model, data, np.array([row]))[0], 0).numpy()
    labels = data.target.labels
    pred = Predictor(path, device="cpu")
    out = pred.predict(text=text, audio=audio)
    assert out["modalities"] == {features[0]: {"present": True}, "text/minilm": {"present": True}}
    np.testing.assert_allclose([out["probabilities"][lab] for lab in labels], ref, atol=2e-3)
    clip = write_clip(audio, tmp_path / "clip.mp4", photo())
    from_video = pred.predict(text=text, video=clip)
    assert from_video["modalities"][features[0]]["present"]
    assert np.abs(np.array([from_video["probabilities"][lab] for lab in labels]) - ref).max() < 0.1
    client = TestClient(create_app(pred, Limits(max_upload_bytes=1 << 20)))
    with open(audio, "rb") as fh:
        r = client.post("/predict", data={"text": text}, files={"file": ("u.flac", fh.read(), "audio/flac")})
    assert r.status_code == 200, r.text
    assert r.json()["label"] == out["label"] and r.json()["modalities"] == out["modalities"]
    text_only = pred.predict(text=text)
    assert text_only["modalities"][features[0]] == {"present": False, "reason": "no audio or video given"}
