"""Micro-batching: one text pass per batch, each request its own answer, bad requests fail alone,
conversation turns in order, media uploads, the event loop free while predictions run, N workers."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import optional

optional("fastapi", "serve")

import httpx
import serve_helpers as helpers
from serve_helpers import free_port, serve_in_thread

from emostore.core.runtime import resolve_precision
from emostore.errors import UserError
from emostore.serve.app import Limits, create_app
from emostore.serve.batcher import Batcher, Busy, Job
from emostore.serve.predictor import Conversation, Inputs, Predictor

TEXTS = ["I can't believe you did that!", "Okay, see you tomorrow then.", "This is the worst day of my life.",
         "We won! We actually won!", "Please don't leave me here alone.", "Hi, how was the trip?",
         "Terrible, they lost my luggage.", "We won! We actually won!"]  # the last one twice


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


def same_answer(got: dict, ref: dict) -> None:
    """Batched and one-by-one answers agree (padding in a batch moves the vectors by float rounding only)."""
    assert got["label"] == ref["label"] and got["modalities"] == ref["modalities"]
    assert got.get("unused_inputs") == ref.get("unused_inputs")
    assert set(got["probabilities"]) == set(ref["probabilities"])
    tolerance = 2e-4 if resolve_precision("auto", "cpu") == "float32" else 3e-3  # bfloat16 keeps ~3 digits
    for label, p in ref["probabilities"].items():
        assert got["probabilities"][label] == pytest.approx(p, abs=tolerance), label


def test_one_text_pass_per_batch_and_each_request_gets_its_own_answer(mlp, monkeypatch):
    pred = Predictor(mlp[0], device="cpu")
    model = pred.encoder("text/minilm").model
    calls: list[list[str]] = []
    encode = model.encode

    def counting_encode(sentences, *args, **kwargs):  # the real encode, counted
        calls.append(list(sentences))
        return encode(sentences, *args, **kwargs)

    monkeypatch.setattr(model, "encode", counting_encode)
    batcher = Batcher(pred, max_batch=len(TEXTS), batch_wait_ms=60_000)  # the batch closes when all are in
    futures = [batcher.submit(Job("predict", Inputs(text=t))) for t in TEXTS]
    got = [f.result(timeout=300) for f in futures]
    batcher.close()
    assert batcher.stats.batches == 1 and batcher.stats.largest == len(TEXTS)
    assert len(calls) == 1 and sorted(calls[0]) == sorted(set(TEXTS))  # one forward pass, each text once
    monkeypatch.undo()
    for text, answer in zip(TEXTS, got):
        same_answer(answer, pred.predict(text=text))
    assert len({json.dumps(a["probabilities"]) for a in got}) == len(set(TEXTS))


def test_a_bad_request_in_a_batch_fails_alone(mlp, tmp_path):
    pred = Predictor(mlp[0], device="cpu")
    image = tmp_path / "face.jpg"
    image.write_bytes(b"\xff\xd8\xff not a picture")
    batcher = Batcher(pred, max_batch=4, batch_wait_ms=60_000)
    jobs = [Inputs(text=TEXTS[0]), Inputs(image=image), Inputs(text=TEXTS[1]),
            Inputs(audio=tmp_path / "missing.wav"), Inputs(text="half a pair \ud800"), Inputs(text=TEXTS[2])]
    futures = [batcher.submit(Job("predict", j)) for j in jobs]
    outcomes = [f.exception(timeout=300) or f.result() for f in futures]
    batcher.close()
    assert batcher.stats.batches == 1 and batcher.stats.largest == 4  # the two refused at once never queued
    assert isinstance(outcomes[1], UserError) and "no modality of this checkpoint" in str(outcomes[1])
    assert isinstance(outcomes[3], UserError) and "does not exist" in str(outcomes[3])
    assert isinstance(outcomes[4], UserError) and "not valid Unicode" in str(outcomes[4])
    for i in (0, 2, 5):
        same_answer(outcomes[i], pred.predict(text=jobs[i].text))


def test_an_encoder_error_on_one_input_is_retried_alone(mlp):
    """If a batched encode raises (here the tokenizer on an unchecked lone surrogate), each input is
    encoded alone: only the bad one fails, the others get the vectors they would get alone."""
    pred = Predictor(mlp[0], device="cpu")
    items = [Inputs(text="fine, thanks"), Inputs(text="bad \ud800 text"), Inputs(text="see you later")]
    turns, failed = pred.encode_many(items)
    assert list(failed) == [1]
    for i in (0, 2):
        np.testing.assert_allclose(turns[i].raw["text/minilm"], pred.encode(text=items[i].text).raw["text/minilm"],
                                   atol=1e-5)


def test_conversation_turns_stay_in_order_across_batches(causal):
    pred = Predictor(causal[0], device="cpu")
    a = [("I got the job!", "Ann"), ("That's amazing!", "Ben"), ("I start on Monday.", "Ann"), ("So soon?", "Ben")]
    b = [("Where were you last night?", "Cy"), ("Out. Why do you care?", "Di"), ("Because I waited for hours!", "Cy")]
    batcher = Batcher(pred, max_batch=16, batch_wait_ms=30)
    jobs = []  # interleaved, all submitted at once: turns of a, of b and single predictions
    for i in range(4):
        jobs.append(("a", batcher.submit(Job("turn", Inputs(text=a[i][0], speaker=a[i][1]), conversation="a"))))
        if i < 3:
            jobs.append(("b", batcher.submit(Job("turn", Inputs(text=b[i][0], speaker=b[i][1]), conversation="b"))))
        jobs.append(("p", batcher.submit(Job("predict", Inputs(text=TEXTS[i])))))
    forget = batcher.submit(Job("forget", conversation="b"))  # after b's turns, whatever the timing
    again = batcher.submit(Job("turn", Inputs(text="Hello?", speaker="Cy"), conversation="b"))
    results = {"a": [], "b": [], "p": []}
    for key, f in jobs:
        results[key].append(f.result(timeout=300))
    assert forget.result(timeout=60) == {"deleted": "b", "existed": True}
    assert again.result(timeout=60)["turn"] == 0  # a new conversation b
    batcher.close()
    assert batcher.stats.batches >= 4 and batcher.stats.largest >= 2  # a's turns go one per batch, others join
    for key, said in (("a", a), ("b", b)):
        assert [r["turn"] for r in results[key]] == list(range(len(said)))
        conv = Conversation()
        for (text, who), got in zip(said, results[key]):
            same_answer(got, pred.add_turn(conv, 50, text=text, speaker=who))
    for text, got in zip(TEXTS, results["p"]):
        same_answer(got, pred.predict(text=text))


def test_media_uploads_in_a_batch(text_audio, tmp_path):
    """Text, text + audio, audio only, video, a broken file: each answered as if alone."""
    from emostore.sample.clips import HERE

    flac = HERE / "media" / "d001_u00.flac"
    clip = text_audio.media / "d001_u02.mp4"
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF1234garbage")
    pred = Predictor(text_audio.path, device="cpu")
    cases = [Inputs(text=TEXTS[0]), Inputs(text=TEXTS[1], audio=flac), Inputs(audio=flac),
             Inputs(text=TEXTS[2], video=clip), Inputs(text=TEXTS[3], audio=broken), Inputs(audio=broken),
             Inputs(text=TEXTS[4])]
    batcher = Batcher(pred, max_batch=8, batch_wait_ms=200)
    futures = [batcher.submit(Job("predict", c)) for c in cases]
    turn_futures = [batcher.submit(Job("turn", Inputs(text="Listen to this.", audio=flac, speaker="Ann"),
                                       conversation="x")),
                    batcher.submit(Job("turn", Inputs(text="I heard it.", speaker="Ben"), conversation="x"))]
    outcomes = [f.exception(timeout=300) or f.result() for f in futures]
    turns = [f.result(timeout=300) for f in turn_futures]
    batcher.close()
    assert isinstance(outcomes[5], UserError) and "no modality" in str(outcomes[5])
    assert outcomes[4]["modalities"]["audio/egemaps"]["present"] is False
    assert "broken.wav" in outcomes[4]["modalities"]["audio/egemaps"]["reason"]
    assert outcomes[3]["modalities"]["audio/egemaps"] == {"present": True}
    for c, got in zip(cases, outcomes):
        if not isinstance(got, Exception):
            same_answer(got, pred.predict(**{k: v for k, v in vars(c).items() if v is not None}))
    assert [t["turn"] for t in turns] == [0, 1]
    assert turns[0]["modalities"]["audio/egemaps"] == {"present": True}
    conv = Conversation()
    same_answer(turns[0], pred.add_turn(conv, 50, text="Listen to this.", audio=flac, speaker="Ann"))
    same_answer(turns[1], pred.add_turn(conv, 50, text="I heard it.", speaker="Ben"))


def test_a_full_queue_refuses_new_requests(mlp):
    batcher = Batcher(Predictor(mlp[0], device="cpu"), max_batch=1, batch_wait_ms=0, max_queue=2)
    first = [batcher.submit(Job("predict", Inputs(text=t))) for t in TEXTS[:2]]
    with pytest.raises(Busy):  # the first takes milliseconds to encode: two are still in flight
        batcher.submit(Job("predict", Inputs(text=TEXTS[2])))
    assert all(f.result(timeout=120)["label"] for f in first)
    assert batcher.submit(Job("predict", Inputs(text=TEXTS[2]))).result(timeout=120)["label"]
    batcher.close()


def test_health_answers_while_predictions_run(causal):
    """The event loop only parses and waits: /health answers while a queue of long texts is predicted,
    and the answers that come back are each request's own."""
    pred = Predictor(causal[0], device="cpu")
    long_texts = [f"{t} " * 12 + f"(number {i})" for i, t in enumerate(TEXTS * 3)]  # 24 requests, ~300 chars
    app = create_app(pred, Limits(max_text_chars=2000), max_batch=4, batch_wait_ms=5)
    with serve_in_thread(app) as url, httpx.Client(timeout=300) as client:
        with ThreadPoolExecutor(len(long_texts)) as pool:
            futures = [pool.submit(lambda t: httpx.post(f"{url}/predict", json={"text": t}, timeout=300), t)
                       for t in long_texts]
            during, latencies = [], []
            while not all(f.done() for f in futures):
                t = time.perf_counter()
                h = client.get(f"{url}/health")
                latency = time.perf_counter() - t
                assert h.status_code == 200
                if h.json()["in_flight"] > 0 and not all(f.done() for f in futures):
                    during.append(h.json())
                    latencies.append(latency)
                time.sleep(0.01)
            answers = [f.result() for f in futures]
        health = client.get(f"{url}/health").json()
    assert len(during) >= 3, "no /health answer arrived while predictions were in flight"
    assert statistics.median(latencies) < 0.05, latencies
    assert health["in_flight"] == 0 and health["batching"]["requests"] == len(long_texts)
    assert health["batching"]["largest"] > 1 and health["batching"]["batches"] < len(long_texts)
    for text, r in zip(long_texts, answers):
        assert r.status_code == 200, r.text
        same_answer(r.json(), pred.predict(text=text))


#: Long requests (about 120 words each), so that a batch takes a while and requests wait in the workers.
LONG = [f"Request {i}: " + " ".join(TEXTS * 6) for i in range(40)]


def kill_a_worker_with_requests_in_flight(client, url: str, pid: int) -> list:
    """Send :data:`LONG` at once; when both workers hold at least 3 of them, SIGKILL the worker ``pid``.
    Returns the responses (a response that never came fails here, after 5 minutes)."""
    with ThreadPoolExecutor(16) as pool:
        sent = [pool.submit(client.post, f"{url}/predict", json={"text": t}) for t in LONG]
        deadline = time.time() + 300
        while min(client.get(f"{url}/health").json()["in_flight_per_worker"]) < 3:
            assert time.time() < deadline and not all(f.done() for f in sent), "the requests never queued up"
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        return [f.result(timeout=300) for f in sent]


@pytest.mark.slow
def test_workers_keep_each_conversation_in_order_and_survive_a_crash(causal):
    """`emostore serve --workers 2`: turns of interleaved conversations are answered in order and as
    one process would; a worker killed with SIGKILL while it holds requests answers each of them with
    a 503 (send it again), is restarted, and the server goes on answering as before."""
    psutil = optional("psutil", "dev")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    server = subprocess.Popen([sys.executable, "-m", "emostore.cli", "serve", str(causal[0]), "--port", str(port),
                               "--device", "cpu", "--workers", "2", "--batch-wait-ms", "5"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        with httpx.Client(timeout=300) as client:
            deadline = time.time() + 600
            while time.time() < deadline:
                try:
                    if client.get(f"{url}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            assert client.get(f"{url}/health").json()["workers"] == 2
            said = {f"c{i}": [(f"Turn {j} of conversation {i}, {TEXTS[(i + j) % 7]}", "AB"[j % 2]) for j in range(4)]
                    for i in range(4)}

            def talk(cid: str) -> list[dict]:
                return [client.post(f"{url}/conversations/{cid}/turns", json={"text": t, "speaker": who}).json()
                        for t, who in said[cid]]

            with ThreadPoolExecutor(6) as pool:
                convs = dict(zip(said, pool.map(talk, said)))
                singles = list(pool.map(lambda t: client.post(f"{url}/predict", json={"text": t}).json(), TEXTS))
            pred = Predictor(causal[0], device="cpu")
            for cid, answers in convs.items():
                assert [a["turn"] for a in answers] == [0, 1, 2, 3] and {a["conversation"] for a in answers} == {cid}
                conv = Conversation()
                for (t, who), got in zip(said[cid], answers):
                    same_answer(got, pred.add_turn(conv, 50, text=t, speaker=who))
            for t, got in zip(TEXTS, singles):
                same_answer(got, pred.predict(text=t))
            workers = [p for p in psutil.Process(server.pid).children() if "spawn_main" in " ".join(p.cmdline())]
            assert len(workers) == 2
            answers = kill_a_worker_with_requests_in_flight(client, url, workers[0].pid)
            codes = [r.status_code for r in answers]
            assert set(codes) <= {200, 503} and 503 in codes, codes  # an answer for each: none hangs
            lost = [t for t, r in zip(LONG, answers) if r.status_code == 503]
            for r in answers:
                if r.status_code == 503:
                    assert "worker process running this request died" in r.json()["detail"]
                    assert r.headers["retry-after"] == "1"
            assert client.get(f"{url}/health").json()["worker_restarts"] == 1
            # the server keeps serving: the lost requests sent again, and new ones, are answered as before
            again = [client.post(f"{url}/predict", json={"text": t}) for t in [*lost[:3], *TEXTS[:4]]]
            assert [r.status_code for r in again] == [200] * len(again)
            for t, r in zip([*lost[:3], *TEXTS[:4]], again):
                same_answer(r.json(), pred.predict(text=t))
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        assert server.stderr is not None
        log = server.stderr.read().decode(errors="replace")
    assert "worker 0 died" in log or "worker 1 died" in log, log[-2000:]
