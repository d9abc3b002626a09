"""The main job on the built-in sample, offline: ingest -> text, audio and face features ->
heads -> search -> prediction of a new utterance."""

from __future__ import annotations

import tempfile
from pathlib import Path

from emostore.display import console, show_info, show_ingest, show_neighbours, show_prediction
from emostore.errors import UserError

#: What ``emostore demo`` writes into its folder.
WRITES = ("sample-store", "checkpoints", "media")


def run_demo(directory: Path | None = None, *, device: str = "auto", overwrite: bool = False) -> Path:
    """Build a store from the sample conversations in ``directory`` (a new temporary one by
    default); a folder that already holds a demo is refused unless ``overwrite``."""
    from emostore.extract.encoders.text import text_encoder
    from emostore.extract.runner import run_extraction
    from emostore.heads.run import demo_heads
    from emostore.ingest.run import ingest
    from emostore.ingest.sample import SAMPLE

    root = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="emostore-demo-"))
    there = [name for name in WRITES if (root / name).exists()]
    if there and not overwrite:
        raise UserError(f"--dir {root} already holds {', '.join(there)} (a demo made before): choose another --dir, "
                        "or pass --overwrite to replace it")
    store_path = root / "sample-store"
    console.rule("[bold]1. ingest the sample conversations (with speech + face clips for some turns)")
    store, result = ingest("sample", SAMPLE, store_path, overwrite=True, clips=root / "media")
    show_ingest(result, str(store_path))

    console.rule("[bold]2. extract features: text (bundled all-MiniLM-L6-v2), audio (openSMILE), face (MediaPipe)")
    encoders = [("text", lambda: text_encoder("minilm", device=device)),
                ("text", lambda: text_encoder("minilm", device=device, context=2)),
                ("audio", _audio_encoder), ("visual", _visual_encoder)]
    for modality, make in encoders:
        try:
            enc = make()
        except UserError as exc:  # an optional extra or model file that is not here
            console.print(f"[yellow]skipped {modality}[/yellow]: {exc}")
            continue
        report = run_extraction(store, enc, progress=console.is_terminal)
        console.print(f"{report.feature_set} (config {report.config_hash}): {report.rows_run - report.rows_failed} "
                      f"rows with data, {report.rows_failed} masked (e.g. {_first_reason(report)})")
    show_info(store.info())

    console.rule("[bold]3. train heads on the stored embeddings, evaluate on the test split")
    ckpts = root / "checkpoints"
    demo_heads(store, ckpts, device=device)
    fused = [n for n in store.feature_sets() if n in ("text/minilm", "audio/egemaps", "visual/landmarks")]
    if len(fused) > 1:
        _fused_head(store, fused, ckpts / "fused", device)

    console.rule("[bold]4. nearest-emotion search")
    from emostore.search.run import build_index, search

    build_index(store, ["text/minilm"])
    show_neighbours(search(store, "I can't find my keys and the taxi is already here!", k=5))

    console.rule("[bold]5. predict a new utterance")
    from emostore.serve.predictor import Predictor

    sentence = "We won the final! This is the best day of my life!"
    console.print(f"mlp checkpoint, text only: [italic]{sentence}[/italic]")
    show_prediction(Predictor(ckpts / "mlp", device=device).predict(text=sentence))
    console.print(f"\nstore: {store_path}\ncheckpoints: {ckpts}\ntry:", highlight=False, soft_wrap=True)
    for command in (f"emostore info {store_path}",
                    f"emostore evaluate {ckpts / 'context'} --store {store_path} --report {root / 'report'}",
                    f"emostore serve {ckpts / 'context'}"):  # whole lines, never wrapped: they are copied
        console.print(f"  {command}", markup=False, highlight=False, soft_wrap=True)
    return store_path


def _audio_encoder():  # type: ignore[no-untyped-def]
    from emostore.extract.encoders.opensmile import OpenSmileEncoder

    return OpenSmileEncoder.create(feature_set="egemaps")


def _visual_encoder():  # type: ignore[no-untyped-def]
    from emostore.extract.encoders.face import visual_encoder

    return visual_encoder("landmarks", fps=5.0)


def _first_reason(report) -> str:  # type: ignore[no-untyped-def]
    return report.failures[0][1] if report.failures else "none"


def _fused_head(store, features: list[str], out: Path, device: str) -> None:  # type: ignore[no-untyped-def]
    from emostore.heads import checkpoint
    from emostore.heads.data import load_data
    from emostore.heads.evaluate import evaluate_data
    from emostore.heads.train import TrainConfig, fit

    data = load_data(store, features, "emotion")
    fitted = fit(data, "attention", config=TrainConfig(device=device, modality_dropout=0.3, patience=10))
    checkpoint.save(fitted, data, out, store=store, overwrite=True)
    m = evaluate_data(fitted.model, data, "test").metrics
    others = [i for i, n in enumerate(features) if not n.startswith("text/")]
    present = int(data.mask[:, others].any(1).sum())
    console.print(f"[green]trained[/green] attention over {' + '.join(features)} ({present} rows with audio or "
                  f"face, the rest masked): test weighted F1 {m['weighted_f1']:.3f}, accuracy {m['accuracy']:.3f}")
