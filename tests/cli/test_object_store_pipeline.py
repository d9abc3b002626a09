"""The whole pipeline on an ``s3://`` store: a real S3 endpoint on loopback (moto's server, through
s3fs), extraction and the index build on a Dask cluster; then the server stopped mid-extraction."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from conftest import SAMPLE, optional, rounding
from typer.testing import CliRunner

from emostore.cli import app
from emostore.extract.runner import run_extraction
from emostore.ingest.run import ingest
from emostore.store import Store

distributed = optional("distributed", "cluster")
pytestmark = pytest.mark.slow
runner = CliRunner()
CHUNK = 24


@pytest.fixture(scope="module")
def cluster(s3_server):
    """Two worker processes, started after the S3 endpoint is in the environment (they inherit it)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, silence_logs=logging.ERROR,
                                  dashboard_address=":0") as c:
        yield c.scheduler_address


def run(*args: object) -> dict | str:
    r = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout) if "--json" in args else r.stdout


def test_pipeline_on_s3(s3_server, cluster, sample_store, tmp_path):
    url = s3_server.bucket("pipeline") + "/sample/store"
    made = run("ingest", "csv", SAMPLE, "--out", url, "--dataset", "sample", "--json")
    assert made["utterances"] == 385 and made["path"] == url
    out = run("extract", "text", url, "--device", "cpu", "--batch-size", "32", "--chunk-rows", "48",
              "--cluster", cluster, "--json")
    assert out["complete"] and out["chunks_run"] == 9 and out["rows_run"] == 385
    info = run("info", url, "--json")
    assert info["features"]["text/minilm"]["complete"] and info["features"]["text/minilm"]["rows_valid"] == 385
    on_s3 = Store.open(url, mode="r")
    _, X, _ = on_s3.read("text/minilm")
    np.testing.assert_allclose(X, sample_store.read("text/minilm")[1],  # same model, other batching
                               atol=rounding(on_s3.feature_set("text/minilm").config["precision"]))

    ckpt = tmp_path / "ckpt"
    run("train", url, "--features", "text", "--head", "mlp", "--out", ckpt, "--epochs", "3", "--device", "cpu",
        "--json")
    assert json.loads((ckpt / "checkpoint.json").read_text())["store"]["path"] == url
    assert run("evaluate", ckpt, "--store", url, "--split", "test", "--json")["n"] == 66
    swept = run("sweep", url, "--heads", "linear", "--features", "text/minilm", "--seeds", "1", "--epochs", "2",
                "--device", "cpu", "--json")
    assert len(swept["runs"]) == 1 and 0 <= swept["summary"][0]["weighted_f1"]["mean"] <= 1

    built = run("index", "build", url, "--features", "text", "--kind", "ivf", "--nlist", "8", "--nprobe", "8",
                "--shards", "2", "--cluster", cluster, "--quiet", "--json")
    assert built["n_vectors"] == 385 and built["shards"] == 2 and built["index"] == f"{url}/indexes/text-minilm"
    found = run("search", url, "I am so happy for you!", "-k", "5", "--json")
    assert len(found["neighbours"]) == 5 and found["index"] == "text-minilm"
    by_id = run("search", url, "d001_u01", "-k", "3", "--json")
    assert "d001_u01" not in [h["id"] for h in by_id["neighbours"]] and len(by_id["neighbours"]) == 3

    # predict and serve find their evidence in the training store, on S3
    predicted = run("predict", ckpt, "--text", "I can't believe you did that to me!", "--device", "cpu", "--json")
    assert len(predicted["evidence"]) == 5
    from fastapi.testclient import TestClient

    from emostore.serve.app import create_app
    from emostore.serve.predictor import Predictor

    with TestClient(create_app(Predictor(ckpt, device="cpu", evidence_store=url))) as client:
        response = client.post("/predict", json={"text": "That is wonderful news"})
        assert response.status_code == 200 and len(response.json()["evidence"]) == 5

    # plain zarr reads the object-store copy too, without warnings
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        root = zarr.open_group(zarr.storage.FsspecStore.from_url(url, read_only=True), mode="r")
        keys = set(dict(root.members(max_depth=None)))
    assert {"table/id", "features/text/minilm/values", "indexes/text-minilm"} <= keys


@pytest.fixture(scope="module")
def reference(tmp_path_factory, minilm_encoder) -> Store:
    store, _ = ingest("csv", [SAMPLE], tmp_path_factory.mktemp("ref") / "store", dataset="sample")
    run_extraction(store, minilm_encoder, chunk_rows=CHUNK, progress=False)
    return store


def done_rows(url: str) -> int:
    store = Store.open(url)
    return int(store.feature_set("text/minilm").done().sum()) if store.has_feature_set("text/minilm") else 0


def test_server_stopped_mid_extraction_then_rerun_completes(s3_server, cluster, reference, minilm_encoder):
    url = s3_server.bucket("outage") + "/store"
    ingest("csv", [SAMPLE], url, dataset="sample")
    cmd = [sys.executable, "-m", "emostore.cli", "extract", "text", url, "--device", "cpu", "--batch-size", "32",
           "--chunk-rows", str(CHUNK), "--cluster", cluster, "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and done_rows(url) < CHUNK:
        time.sleep(0.05)
    before = done_rows(url)
    s3_server.stop()
    try:
        time.sleep(4)  # tasks and the client meet connection errors meanwhile
    finally:
        s3_server.start()
    _, err = proc.communicate(timeout=300)
    print(f"\nrun during the outage: exit {proc.returncode}, last line {err.strip().splitlines()[-1:]}")
    assert CHUNK <= before < 385, f"the outage came too late to test anything ({before} rows done)"
    # whatever the interrupted run managed, every chunk marked done holds its data
    partial = Store.open(url).feature_set("text/minilm")
    done = partial.done()
    _, X, mask = partial.read()
    np.testing.assert_array_equal(X[done], reference.read("text/minilm")[1][done])
    assert not mask[~done].any()
    if proc.returncode == 0:
        assert done.all(), err
    report = run_extraction(Store.open(url), minilm_encoder, chunk_rows=CHUNK, progress=False, cluster=cluster)
    assert report.complete and not report.chunk_errors
    for x, y in zip(reference.read("text/minilm"), Store.open(url).read("text/minilm")):
        np.testing.assert_array_equal(x, y)
