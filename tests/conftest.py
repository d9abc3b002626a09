"""Shared fixtures: the bundled MiniLM loaded once per session, the ../shared data and models, and the
optional extras.

What a test needs but this machine may lack (a ../shared folder, a model file, an optional extra)
makes it skip with the reason; with ``EMOSTORE_REQUIRE_DATA=1`` (CI, which installs everything)
it fails instead, so that a broken install or a missing folder cannot pass as a green run.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MODELS = SHARED.parent / "models"
SAMPLE = Path(__file__).resolve().parents[1] / "emostore" / "sample" / "dialogues.csv"
REQUIRE_DATA = os.environ.get("EMOSTORE_REQUIRE_DATA") == "1"


def unavailable(reason: str) -> NoReturn:
    """Skip (the test, or the whole module when called at import) with ``reason``; fail under
    ``EMOSTORE_REQUIRE_DATA=1``."""
    if REQUIRE_DATA:
        pytest.fail(f"{reason} (EMOSTORE_REQUIRE_DATA=1)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or :func:`unavailable` when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        unavailable(f"real data not available: {path} is missing (see ../shared/README.md)")
    return path


def shared_model(name: str) -> Path:
    """A model file in ../shared/models, or :func:`unavailable` when it is absent."""
    path = MODELS / name
    if not path.exists():
        unavailable(f"model not available: {path} is missing (see ../shared/README.md)")
    return path


def optional(module: str, extra: str) -> ModuleType:
    """``module`` of the optional ``extra``, or :func:`unavailable` when it cannot be imported.
    Core dependencies are imported plainly: a broken core install must fail."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        unavailable(f"{module} cannot be imported ({exc}): pip install 'emostore[{extra}]'")


def rounding(precision: str) -> float:
    """How far the same model's vectors may differ with other batching or padding: float32
    rounding, or bfloat16's three significant digits (``--precision auto`` on CPUs with AMX)."""
    return 1e-5 if precision == "float32" else 5e-3


@pytest.fixture(scope="session")
def minilm_encoder():
    """The bundled all-MiniLM-L6-v2 on CPU (loaded once; other text encoders share its weights)."""
    from emostore.extract.encoders.text import text_encoder

    return text_encoder("minilm", device="cpu", batch_size=32)


@pytest.fixture(scope="session")
def sample_store(tmp_path_factory, minilm_encoder):
    """The built-in sample ingested with text/minilm extracted (read-only for tests)."""
    from emostore.extract.runner import run_extraction
    from emostore.ingest.run import ingest

    store, _ = ingest("csv", [SAMPLE], tmp_path_factory.mktemp("sample") / "store", dataset="sample")
    run_extraction(store, minilm_encoder, progress=False)
    return store


def sample_with_audio_csv(directory: Path) -> Path:
    """The sample CSV plus a ``media`` column: its speech file for the utterances that have one
    (``emostore/sample/media.csv``), nothing for the rest."""
    import csv

    media = {}
    with open(SAMPLE.parent / "media.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            media[row["id"]] = str((SAMPLE.parent / row["media"]).resolve())
    out = directory / "sample_audio.csv"
    with open(SAMPLE, newline="", encoding="utf-8") as src, open(out, "w", newline="", encoding="utf-8") as dst:
        reader = csv.DictReader(src)
        writer = csv.DictWriter(dst, fieldnames=[*(reader.fieldnames or []), "media"])
        writer.writeheader()
        for row in reader:
            writer.writerow({**row, "media": media.get(row["id"], "")})
    return out


@pytest.fixture(scope="session")
def audio_sample_store(tmp_path_factory, minilm_encoder):
    """The sample with its speech files: text/minilm for every row, audio/egemaps-lld (25-d frames
    every 10 ms) and audio/egemaps for the 42 rows with speech, masked for the others."""
    optional("opensmile", "audio")
    from emostore.extract.encoders.opensmile import OpenSmileEncoder
    from emostore.extract.runner import run_extraction
    from emostore.ingest.run import ingest

    tmp = tmp_path_factory.mktemp("sample_audio")
    store, _ = ingest("csv", [sample_with_audio_csv(tmp)], tmp / "store", dataset="sample")
    run_extraction(store, minilm_encoder, progress=False)
    for fs in ("egemaps-lld", "egemaps"):
        run_extraction(store, OpenSmileEncoder.create(feature_set=fs), chunk_rows=64, progress=False)
    return store


class S3Server:
    """moto's S3 server on 127.0.0.1 (a real HTTP endpoint); ``stop``/``start`` keep its data and port."""

    def __init__(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._cls = ThreadedMotoServer
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        self.host, self.port = self.server.get_host_and_port()
        self.endpoint = f"http://{self.host}:{self.port}"
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.server.stop()
            self.running = False

    def start(self) -> None:
        if not self.running:
            self.server = self._cls(ip_address="127.0.0.1", port=self.port, verbose=False)
            self.server.start()
            self.running = True

    def bucket(self, name: str) -> str:
        import fsspec

        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(name)
        return f"s3://{name}"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 endpoint for the whole session; the standard AWS variables point every client
    (this process, CLI subprocesses, Dask workers started afterwards) at it."""
    optional("moto.server", "dev")
    optional("s3fs", "s3")
    import os

    server = S3Server()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": server.endpoint, "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield server
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def dask_client():
    """A real Dask cluster for one test module: a LocalCluster of 2 worker processes (1 thread each),
    a dying worker's task rescheduled up to 5 times."""
    import logging

    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed (emostore[cluster])")
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 5}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           silence_logs=logging.ERROR, dashboard_address=":0")
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()
