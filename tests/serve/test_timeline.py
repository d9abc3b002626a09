"""``emostore predict --timeline`` on a long recording made from the sample's clips, and ``POST /timeline``."""

from __future__ import annotations

import csv
import json

import matplotlib.image as mpimg
import numpy as np
import pytest
import serve_helpers as helpers
from conftest import optional
from typer.testing import CliRunner

from emostore.cli import app
from emostore.sample.clips import joined_recording, speech_clips

optional("silero_vad", "audio")
GAPS = [1.0, 1.6, 1.2, 2.0, 1.0, 1.4, 1.8, 1.0, 1.2, 1.5, 1.1, 2.0]


@pytest.fixture(scope="module")
def ckpt(audio_sample_store, tmp_path_factory):
    return helpers.egemaps_text(audio_sample_store, tmp_path_factory)


@pytest.fixture(scope="module")
def long_file(tmp_path_factory):
    """Twelve clips with known silences between them (about a minute), and where their speech lies."""
    path = tmp_path_factory.mktemp("long") / "long.wav"
    return path, joined_recording(path, speech_clips()[10:22], GAPS)


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_timeline_json_csv_plot_and_transcript(ckpt, long_file, tmp_path):
    path, truth = long_file
    (t0, t1), (u0, u1) = truth[0], truth[3]
    transcript = tmp_path / "words.csv"
    transcript.write_text(f"start,end,text\n{t0:.2f},{t1:.2f},\"Well, I never did.\"\n"
                          f"{u0:.2f},{u1:.2f},That is wonderful news\n", encoding="utf-8")
    out_csv, out_png = tmp_path / "t.csv", tmp_path / "t.png"
    r = run("predict", ckpt, "--audio", path, "--timeline", "--json", "--csv", out_csv, "--plot", out_png,
            "--transcript", transcript, "--device", "cpu")
    assert r.exit_code == 0, r.output
    tl = json.loads(r.stdout)
    segs = tl["segments"]
    assert len(segs) == len(truth)
    for s, (a, b) in zip(segs, truth):
        assert abs(s["start"] - a) <= 0.25 and abs(s["end"] - b) <= 0.25
        assert s["label"] == max(s["probabilities"], key=s["probabilities"].get)
    assert segs[0]["text"] == "Well, I never did." and segs[3]["text"] == "That is wonderful news"
    assert segs[0]["modalities"] == ["text", "audio"] and segs[1]["modalities"] == ["audio"]
    # each segment is exactly what `predict` gives for its span of the file
    from emostore.serve.predictor import Predictor

    pred = Predictor(ckpt, device="cpu")
    for s in (segs[1], segs[3]):
        alone = pred.predict(audio=path, start=s["start"], end=s["end"], text=s.get("text"))
        assert alone["probabilities"] == pytest.approx(s["probabilities"], abs=2e-4)  # times are rounded to ms
    summary = tl["summary"]
    assert summary["segments"] == len(truth) and summary["failed"] == 0
    assert summary["duration_s"] == pytest.approx(sum(GAPS) + 1.0 + sum(b - a for a, b in truth), abs=8)
    per = summary["per_emotion"]
    assert sum(v["segments"] for v in per.values()) == len(truth)
    assert sum(v["seconds"] for v in per.values()) == pytest.approx(summary["speech_s"], abs=0.01)
    with open(out_csv, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["label"] for r in rows] == [s["label"] for s in segs]
    assert float(rows[2]["start"]) == segs[2]["start"] and rows[0]["text"] == "Well, I never did."
    assert float(rows[5][segs[5]["label"]]) == segs[5]["probabilities"][segs[5]["label"]]
    img = mpimg.imread(out_png)
    assert img.shape[0] > 300 and img.shape[1] > 1000 and np.ptp(img[..., :3]) > 0.5  # a drawn figure


def test_timeline_refuses_what_it_cannot_do(ckpt, long_file, tmp_path):
    path, _ = long_file
    r = run("predict", ckpt, "--text", "hello", "--timeline")
    assert r.exit_code != 0 and "--timeline reads a recording" in r.output
    r = run("predict", ckpt, "--audio", path, "--plot", tmp_path / "x.png")
    assert r.exit_code != 0 and "go with --timeline" in r.output
    bad = tmp_path / "bad.csv"
    bad.write_text("start,end,text\n1.0,zero,hello\n", encoding="utf-8")
    r = run("predict", ckpt, "--audio", path, "--timeline", "--transcript", bad)
    assert r.exit_code != 0 and f"transcript {bad} row 2" in r.output and len(r.output.strip().splitlines()) == 1
    r = run("predict", ckpt, "--audio", tmp_path / "none.wav", "--timeline")
    assert r.exit_code != 0 and "does not exist" in r.output


def test_timeline_endpoint_matches_the_command(ckpt, long_file):
    import httpx

    from emostore.serve.app import create_app
    from emostore.serve.predictor import Predictor

    path, truth = long_file
    with helpers.serve_in_thread(create_app(Predictor(ckpt, device="cpu"))) as url:
        r = httpx.post(f"{url}/timeline", files={"file": ("long.wav", path.read_bytes(), "audio/wav")}, timeout=120)
        assert r.status_code == 200, r.text
        http = r.json()
        r = httpx.post(f"{url}/timeline", json={"text": "hi"})
        assert r.status_code == 415
        r = httpx.post(f"{url}/timeline", files={"file": ("x.png", b"\x89PNG....", "image/png")})
        assert r.status_code == 422 and "not an image" in r.json()["detail"]
        page = httpx.get(f"{url}/")
        assert page.status_code == 200 and "/static/app.js" in page.text
        assert httpx.get(f"{url}/static/pcm-worklet.js").status_code == 200
    cli = json.loads(run("predict", ckpt, "--audio", path, "--timeline", "--json", "--device", "cpu").stdout)
    assert [(s["start"], s["end"], s["label"]) for s in http["segments"]] == \
        [(s["start"], s["end"], s["label"]) for s in cli["segments"]]
    assert len(http["segments"]) == len(truth) and http["summary"]["per_emotion"] == cli["summary"]["per_emotion"]
