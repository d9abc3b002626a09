"""The main job on the built-in sample, offline: ingest -> text, audio and face features ->
heads -> search -> prediction of a new utterance."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

from emostore.display import console, show_info, show_ingest, show_neighbours, show_prediction
from emostore.errors import UserError

#: The optional steps: the extra each needs, the modules that extra brings, and what it adds.
OPTIONAL = {
    "audio": (("av", "soundfile", "soxr", "opensmile"), "clips of 42 spoken turns, openSMILE features"),
    "visual": (("av", "cv2", "mediapipe", "ai_edge_litert"), "MediaPipe face features of the clips"),
    "search": (("faiss", "psutil"), "nearest-emotion search"),
}


def absent_extras() -> dict[str, list[str]]:
    """``{extra: [missing modules]}`` for each optional step whose extra is not (fully) installed."""
    out = {}
    for extra, (modules, _) in OPTIONAL.items():
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            out[extra] = missing
    return out


def _say_skipped(extra: str, missing: list[str]) -> None:
    console.print(f"[yellow]skipped {extra}[/yellow] ({OPTIONAL[extra][1]}): no {', '.join(missing)}; "
                  f"pip install 'emostore\\[{extra}]'", soft_wrap=True)
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
    absent = absent_extras()
    for extra, missing in absent.items():
        _say_skipped(extra, missing)
    console.rule("[bold]1. ingest the sample conversations" + ("" if "audio" in absent else
                                                                " (with speech + face clips for some turns)"))
    clips = None if "audio" in absent else root / "media"  # the clips are made with the audio extra's av
    store, result = ingest("sample", SAMPLE, store_path, overwrite=True, clips=clips)
    show_ingest(result, str(store_path))

    encoders = [("text", lambda: text_encoder("minilm", device=device)),
                ("text", lambda: text_encoder("minilm", device=device, context=2))]
    if "audio" not in absent:  # without it there are no clips: no audio, and no frames for the face features
        encoders.append(("audio", _audio_encoder))
        if "visual" not in absent:
            encoders.append(("visual", _visual_encoder))
    kinds = {"text": "text (bundled all-MiniLM-L6-v2)", "audio": "audio (openSMILE)", "visual": "face (MediaPipe)"}
    console.rule(f"[bold]2. extract features: {', '.join(dict.fromkeys(kinds[m] for m, _ in encoders))}")
    for modality, make in encoders:
        try:
            enc = make()
        except UserError as exc:  # a model file that is not here
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

    if "search" in absent:
        console.rule("[bold]4. nearest-emotion search: skipped (no search extra)")
    else:
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
