"""Checkpoints trained once per session on the bundled sample, shared by the serving tests."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from serve_helpers import train

from emostore.heads import checkpoint as ckpt_io
from emostore.heads.data import load_data
from emostore.heads.train import TrainConfig, fit


@pytest.fixture(scope="session")
def mlp(sample_store, tmp_path_factory):
    return train(sample_store, "mlp", tmp_path_factory.mktemp("ck") / "mlp")


@pytest.fixture(scope="session")
def causal(sample_store, tmp_path_factory):
    return train(sample_store, "context", tmp_path_factory.mktemp("ck") / "ctx", causal=True, hidden=64)


@pytest.fixture(scope="session")
def text_audio(tmp_path_factory, minilm_encoder):
    """An ``mlp`` on text/minilm + audio/egemaps of the sample with its media clips (speech + face video)."""
    pytest.importorskip("opensmile", reason="the audio extra is not installed")
    from emostore.demo import sample_with_media
    from emostore.extract.encoders.opensmile import OpenSmileEncoder
    from emostore.extract.runner import run_extraction
    from emostore.ingest.run import ingest

    work = tmp_path_factory.mktemp("av")
    store, _ = ingest("csv", [sample_with_media(work)], work / "store", dataset="sample")
    run_extraction(store, minilm_encoder, progress=False)
    run_extraction(store, OpenSmileEncoder.create(feature_set="egemaps"), progress=False)
    data = load_data(store, ["text/minilm", "audio/egemaps"], "emotion")
    result = fit(data, "mlp", {}, TrainConfig(epochs=5, modality_dropout=0.3, device="cpu"))
    path = ckpt_io.save(result, data, work / "ckpt", store=store)
    return SimpleNamespace(path=path, store=store, media=work / "media")
