"""Shared fixtures: the bundled MiniLM loaded once per session, and the ../shared data."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SAMPLE = Path(__file__).resolve().parents[1] / "emostore" / "sample" / "dialogues.csv"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with a reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is missing (see ../shared/README.md)")
    return path


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
