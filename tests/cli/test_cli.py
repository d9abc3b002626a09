"""The command line end to end on the sample: ingest, extract, info --json, errors, demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SAMPLE
from typer.testing import CliRunner

from emostore.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_ingest_extract_info_json(tmp_path, minilm_encoder):
    store = tmp_path / "store"
    r = run("ingest", "csv", SAMPLE, "--out", store, "--dataset", "sample")
    assert r.exit_code == 0, r.output
    assert "385 utterances" in r.output
    r = run("extract", "text", store, "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["feature_set"] == "text/minilm" and out["rows_run"] == 385 and out["complete"]
    r = run("extract", "text", store, "--device", "cpu", "--context", "1", "--json")
    assert json.loads(r.output)["feature_set"] == "text/minilm-ctx1"
    r = run("info", store, "--json")
    info = json.loads(r.output)
    assert info["utterances"] == 385
    assert info["splits"] == {"train": 268, "test": 66, "dev": 51}
    assert sum(info["labels"].values()) == 385 and info["labels"]["neutral"] == 124
    f = info["features"]["text/minilm"]
    assert f["dim"] == 384 and f["rows_done"] == 385 and len(f["config_hash"]) == 12
    assert set(info["features"]) == {"text/minilm", "text/minilm-ctx1"}
    r = run("info", store)
    assert r.exit_code == 0 and "text/minilm" in r.output and "385/385" in r.output


def test_user_errors_are_one_line_without_traceback(tmp_path, minilm_encoder):
    r = runner.invoke(app, ["info", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "is not an emostore store" in r.output and "Traceback" not in r.output
    store = tmp_path / "s"
    run("ingest", "csv", SAMPLE, "--out", store)
    r = runner.invoke(app, ["ingest", "csv", str(SAMPLE), "--out", str(store)])
    assert r.exit_code == 1 and "--overwrite" in r.output
    run("extract", "text", store, "--device", "cpu", "--name", "x", "--quiet")
    r = runner.invoke(app, ["extract", "text", str(store), "--device", "cpu", "--name", "x",
                            "--max-length", "8"])
    assert r.exit_code == 1 and "another configuration" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["extract", "text", str(store), "--shard", "3/2"])
    assert r.exit_code == 1 and "--shard" in r.output
    r = runner.invoke(app, ["ingest", "csv", str(SAMPLE), "--out", str(tmp_path / "t"), "--label-col", "nope"])
    assert r.exit_code == 1 and "'nope'" in r.output


def test_a_label_only_store_suggests_nothing_it_cannot_do(tmp_path):
    (tmp_path / "labels.csv").write_text(  # the s3prl CMU-MOSEI labels CSV: no text, no media
        ",file,index,start,end,label2a,label2b,label6,label7,split\n"
        "0,81406,0,1.0,2.0,1,1,0,2,0\n0,81406,1,0.0,1.0,0,-1,4,-3,2\n2,zz,0,0,1,1,0,1,0,1\n")
    store = tmp_path / "store"
    assert run("ingest", "mosei", tmp_path / "labels.csv", "--out", store).exit_code == 0
    r = run("info", store)
    assert r.exit_code == 0 and "nothing to extract" in r.output and "extract text" not in r.output
    r = runner.invoke(app, ["extract", "text", str(store), "--device", "cpu", "--quiet"])
    assert r.exit_code == 1 and "none of its 3 utterances could be encoded into text/minilm" in r.output
    assert "no text" in r.output and "Traceback" not in r.output


def test_a_damaged_store_is_named_in_one_line(tmp_path):
    import shutil

    store = tmp_path / "store"
    run("ingest", "csv", SAMPLE, "--out", store)
    shutil.rmtree(store / "features")
    for args in (["extract", "text", str(store)], ["info", str(store)], ["train", str(store), "-f", "text",
                                                                         "--out", str(tmp_path / "c")]):
        r = runner.invoke(app, args)
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        assert f"{store} is damaged: its features group is missing" in r.output
    import zarr

    zarr.open_group(str(store), mode="r+").create_group("features")
    assert runner.invoke(app, ["info", str(store)]).exit_code == 0
    shutil.rmtree(store / "table" / "speaker")
    r = runner.invoke(app, ["info", str(store)])
    assert r.exit_code == 1 and "table column 'speaker' is missing" in r.output


def test_ingest_meld_and_mosi_commands(tmp_path):
    from conftest import shared_data

    meld = shared_data("meld")
    r = run("ingest", "meld", meld, "--out", tmp_path / "meld", "--json")
    info = json.loads(r.output)
    assert info["utterances"] == 13708 and info["splits"] == {"train": 9989, "test": 2610, "dev": 1109}
    assert len(info["labels"]) == 7
    r = run("ingest", "mosi", shared_data("cmu_mosi"), "--out", tmp_path / "mosi", "--json")
    assert json.loads(r.output)["utterances"] == 2199


def test_demo_runs_offline(tmp_path, minilm_encoder):
    r = runner.invoke(app, ["demo", "--dir", str(tmp_path), "--device", "cpu"], terminal_width=80)
    assert r.exit_code == 0, r.output
    assert "text/minilm" in r.output and "385 utterances" in r.output
    assert "We won the final! This is the best day of my life!" in r.output  # the sentence it predicts
    assert (tmp_path / "sample-store" / "zarr.json").exists()
    store, ckpts = tmp_path / "sample-store", tmp_path / "checkpoints"
    lines = r.stdout.splitlines()  # the closing commands, each whole on one line at 80 columns
    assert f"  emostore evaluate {ckpts / 'context'} --store {store} --report {tmp_path / 'report'}" in lines
    assert f"  emostore serve {ckpts / 'context'}" in lines
    before = sorted(p.stat().st_mtime_ns for p in store.rglob("*"))
    r = run("demo", "--dir", tmp_path, "--device", "cpu")  # a second demo into the same folder
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1, r.output
    assert f"--dir {tmp_path} already holds sample-store, checkpoints, media" in r.stderr and "--overwrite" in r.stderr
    assert sorted(p.stat().st_mtime_ns for p in store.rglob("*")) == before


@pytest.mark.slow
def test_demo_on_a_core_install_says_what_each_absent_extra_would_add(tmp_path, minilm_encoder, monkeypatch):
    """Without the audio, visual and search extras (their modules made unimportable by name), the demo
    still ingests, extracts text, trains and predicts, and says in one line per extra what it skipped."""
    from emostore import demo

    absent = {extra: (("emostore_no_such_module",), what) for extra, (_, what) in demo.OPTIONAL.items()}
    monkeypatch.setattr(demo, "OPTIONAL", absent)
    r = run("demo", "--dir", tmp_path, "--device", "cpu")
    assert r.exit_code == 0, r.output
    for extra in ("audio", "visual", "search"):
        said = [line for line in r.output.splitlines() if line.startswith(f"skipped {extra} (")]
        assert len(said) == 1 and said[0].endswith(f"pip install 'emostore[{extra}]'"), r.output
    assert "We won the final! This is the best day of my life!" in r.output
    info = json.loads(run("info", tmp_path / "sample-store", "--json").output)
    assert sorted(info["features"]) == ["text/minilm", "text/minilm-ctx2"]
    assert not (tmp_path / "media").exists()


def test_version():
    from emostore import __version__

    r = run("--version")
    assert r.exit_code == 0 and r.stdout == f"emostore {__version__}\n"


def test_ingest_sample_builds_a_store_of_the_bundled_sample(tmp_path):
    """`ingest sample`: the sample's 385 utterances, the 42 with speech pointing at its FLAC files."""
    r = run("ingest", "sample", "--out", tmp_path / "s", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["utterances"] == 385 and info["dialogues"] == 60 and info["with_media"] == 42
    assert info["splits"] == {"train": 268, "test": 66, "dev": 51} and len(info["labels"]) == 7
    assert "42 of 385 utterances have speech (FLAC) as their media" in info["notes"][0]
    from emostore.store import Store

    media = [m for m in Store.open(tmp_path / "s").table["media"] if m]
    assert len(media) == 42 and all(m.endswith(".flac") and Path(m).is_file() for m in media)


def test_a_feature_set_with_frames_shows_both_widths(tmp_path):
    """egemaps-lld keeps 25-d frames and stores their mean and standard deviation as its 50-d vector."""
    from conftest import optional

    optional("opensmile", "audio")
    store = tmp_path / "store"
    assert run("ingest", "sample", "--out", store).exit_code == 0
    r = run("extract", "audio", store, "--feature-set", "egemaps-lld")
    assert r.exit_code == 0, r.output
    assert "audio/egemaps-lld (opensmile, config " in r.stdout and ", 50-d, frames 25-d) on cpu" in r.stdout
    f = json.loads(run("info", store, "--json").stdout)["features"]["audio/egemaps-lld"]
    assert (f["dim"], f["seq_dim"], f["rows_valid"]) == (50, 25, 42)
    r = run("info", store)
    assert "audio/egemaps-lld: 50-d vectors; each utterance's 25-d frames are kept too" in r.stdout
