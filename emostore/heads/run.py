"""Train a head on a store and save it as a checkpoint: what ``emostore train`` runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emostore.heads import checkpoint
from emostore.heads.base import head_class
from emostore.heads.data import load_data
from emostore.heads.train import FitResult, TrainConfig, fit
from emostore.store import Store


def train(store_path: Path | str, features: list[str] | str, head: str, out: Path, *, target: str = "emotion",
          params: dict[str, Any] | None = None, config: TrainConfig | None = None, overwrite: bool = False,
          progress: bool = False, speaker_norm: bool = False, allow_incomplete: bool = False,
          memory_budget: str | int | None = None) -> tuple[FitResult, Path]:
    """Load the features (or stream them, beyond ``memory_budget``), train ``head`` with early
    stopping on dev and write the checkpoint."""
    checkpoint.check_writable(Path(out), overwrite)  # refuse before training, not after
    store = Store.open(store_path, mode="r")
    data = load_data(store, features, target, speaker_norm=speaker_norm, frames=head_class(head).frames,
                     memory_budget=memory_budget, require_complete=not allow_incomplete)
    result = fit(data, head, params, config, progress=progress)
    for name, missing in data.incomplete.items():
        result.notes.append(f"{name} is incomplete: {missing} rows not extracted yet were left out (masked)")
    path = checkpoint.save(result, data, out, store=store, overwrite=overwrite,
                           extra={"speaker_norm": True} if speaker_norm else None)
    return result, path


def demo_heads(store: Store, directory: Path, *, device: str = "auto") -> dict[str, dict[str, Any]]:
    """Train ``mlp`` (text/minilm) and ``context`` (text/minilm + text/minilm-ctx2 when present) on
    ``store``, save both checkpoints under ``directory`` and show their test evaluation."""
    from emostore.display import console
    from emostore.heads.evaluate import evaluate_data, show

    text = [n for n in ("text/minilm", "text/minilm-ctx2") if store.has_feature_set(n)]
    results = {}
    for head, features in (("mlp", text[:1]), ("context", text)):
        data = load_data(store, features, "emotion")
        fitted = fit(data, head, config=TrainConfig(device=device, patience=10), progress=console.is_terminal)
        path = checkpoint.save(fitted, data, Path(directory) / head, store=store, overwrite=True)
        ev = evaluate_data(fitted.model, data, "test")
        ev.metrics.update({"head": head, "feature_sets": data.feature_sets})
        console.print(f"[green]trained[/green] {head} in {fitted.seconds:.1f}s (best dev weighted F1 "
                      f"{fitted.dev_score:.3f} at epoch {fitted.best_epoch}); checkpoint {path}")
        show(ev.metrics)
        results[head] = ev.metrics
    return results
