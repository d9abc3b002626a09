"""The main job on the built-in sample: ingest -> text features -> summary, all offline."""

from __future__ import annotations

import tempfile
from pathlib import Path

from emostore.display import console, show_info, show_ingest

SAMPLE = Path(__file__).parent / "sample" / "dialogues.csv"


def run_demo(directory: Path | None = None, *, device: str = "auto") -> Path:
    """Build a store from the sample conversations in ``directory`` (a new temporary one by default)."""
    from emostore.extract.runner import run_extraction
    from emostore.extract.text import text_encoder
    from emostore.ingest.run import ingest

    root = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="emostore-demo-"))
    store_path = root / "sample-store"
    console.rule("[bold]1. ingest the sample conversations")
    store, result = ingest("csv", [SAMPLE], store_path, overwrite=True, dataset="sample")
    show_ingest(result, str(store_path))
    console.rule("[bold]2. extract text embeddings (bundled all-MiniLM-L6-v2, offline)")
    for context in (0, 2):
        enc = text_encoder("minilm", device=device, context=context)
        report = run_extraction(store, enc, progress=console.is_terminal)
        console.print(f"{report.feature_set} (config {report.config_hash}) on {enc.device}: {report.rows_run} rows, "
                      f"{report.rows_failed} failed")
    console.rule("[bold]3. the store")
    show_info(store.info())
    console.print(f"store written to [bold]{store_path}[/bold]; try `emostore info {store_path}`")
    return store_path
