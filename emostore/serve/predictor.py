"""Prediction on new utterances: the checkpoint's own encoders, its normalisation, its head.

The encoders are rebuilt from the feature-set configurations saved in the checkpoint, so a new
utterance is encoded exactly as the training rows were. A modality without input is masked, as
in training. Conversations keep their encoded turns, so each new turn costs one encoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from emostore.errors import UserError
from emostore.extract.base import Encoder, rebuild_encoder, resolve_device
from emostore.heads import checkpoint as ckpt_io

#: Which inputs can feed which modality.
SOURCES = {"text": ("text",), "audio": ("audio", "video"), "visual": ("video", "image")}


@dataclass
class Encoded:
    """One utterance, encoded: raw vectors per feature set, and which are present."""

    raw: dict[str, np.ndarray]
    present: dict[str, bool]
    reasons: dict[str, str]
    speaker: str | None = None


@dataclass
class Conversation:
    turns: list[Encoded] = field(default_factory=list)


class Predictor:
    """Load once, predict many times (the CLI's ``predict`` and the HTTP server share it)."""

    def __init__(self, checkpoint: Path, *, device: str = "auto", evidence_store: Path | str | None = None):
        self.checkpoint = ckpt_io.load(Path(checkpoint))
        self.device = resolve_device(device)
        self.model = self.checkpoint.model.to(self.device).eval()
        self.meta = self.checkpoint.meta
        if self.meta.get("speaker_norm"):
            raise UserError(f"checkpoint {checkpoint} was trained with per-speaker normalisation, which needs "
                            "each speaker's own statistics; evaluate it on a store, or retrain without "
                            "--speaker-norm for prediction")
        self.feature_sets = self.checkpoint.feature_sets
        self._encoders: dict[str, Encoder] = {}
        for f in self.meta["feature_sets"]:
            if not f.get("config"):
                raise UserError(f"checkpoint {checkpoint} does not record how {f['name']} was computed; "
                                "retrain it with this emostore version")
        self.evidence = self._open_evidence(evidence_store)

    # ----- encoders ----------------------------------------------------------------------
    @property
    def modalities(self) -> list[str]:
        return [f.split("/", 1)[0] for f in self.feature_sets]

    def encoder(self, name: str) -> Encoder:
        if name not in self._encoders:
            f = next(f for f in self.meta["feature_sets"] if f["name"] == name)
            modality, short = name.split("/", 1)
            self._encoders[name] = rebuild_encoder(modality, f["config"], name=short, device=self.device)
        return self._encoders[name]

    def load_encoders(self) -> None:
        for name in self.feature_sets:
            self.encoder(name)

    def encode(self, *, text: str | None = None, audio: Path | None = None, video: Path | None = None,
               image: Path | None = None, speaker: str | None = None) -> Encoded:
        given = {"text": text if text and text.strip() else None, "audio": audio, "video": video, "image": image}
        if not any(given.values()):
            raise UserError("nothing to predict from: give a text and/or an audio, video or image file")
        for key in ("audio", "video", "image"):
            if given[key] is not None and not Path(given[key]).exists():
                raise UserError(f"{key} file {given[key]} does not exist")
        raw, present, reasons = {}, {}, {}
        for name in self.feature_sets:
            modality = name.split("/", 1)[0]
            source = next((s for s in SOURCES.get(modality, ()) if given[s] is not None), None)
            if source is None:
                present[name], reasons[name] = False, f"no {' or '.join(SOURCES.get(modality, (modality,)))} given"
                continue
            row = pd.DataFrame([{"id": "input", "dialogue": "input", "turn": 0, "speaker": speaker,
                                 "text": given["text"], "media": None if source == "text" else str(given[source]),
                                 "start": np.nan, "end": np.nan}])
            out = self.encoder(name).encode_rows(row, np.array([0]))
            present[name] = bool(out.ok[0])
            reasons[name] = "" if out.ok[0] else out.reasons[0]
            if out.ok[0]:
                raw[name] = np.asarray(out.values[0], dtype=np.float32)
        return Encoded(raw, present, reasons, speaker)

    # ----- the head ----------------------------------------------------------------------
    def _tensors(self, turns: list[Encoded]) -> tuple[list[torch.Tensor], torch.Tensor]:
        xs, masks = [], []
        for f in self.meta["feature_sets"]:
            name, dim = f["name"], f["dim"]
            stats = self.checkpoint.norm[name]
            mean, std = np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)
            rows = [((t.raw[name] - mean) / std) if t.present.get(name) else np.zeros(dim, np.float32)
                    for t in turns]
            xs.append(torch.from_numpy(np.stack(rows).astype(np.float32)))
            masks.append([bool(t.present.get(name)) for t in turns])
        return xs, torch.tensor(masks, dtype=torch.bool).T

    @torch.no_grad()
    def _outputs(self, turns: list[Encoded]) -> torch.Tensor:
        """Head outputs for every turn (a conversation for sequence heads)."""
        xs, mask = self._tensors(turns)
        xs = [x.to(self.device) for x in xs]
        mask = mask.to(self.device)
        if self.model.sequence:
            seen: dict[str, int] = {}
            speakers = torch.tensor([[seen.setdefault(t.speaker, len(seen)) if t.speaker else -1 for t in turns]],
                                    device=self.device)
            valid = torch.ones(1, len(turns), dtype=torch.bool, device=self.device)
            return self.model([x.unsqueeze(0) for x in xs], mask.unsqueeze(0), valid, speakers)[0].cpu()
        return self.model(xs, mask).cpu()

    def describe(self, output: torch.Tensor, turn: Encoded) -> dict[str, Any]:
        target = self.checkpoint.target
        result: dict[str, Any] = {"target": target.name, "head": self.checkpoint.head,
                                  "modalities": {n: {"present": turn.present[n], **({"reason": turn.reasons[n]}
                                                                                   if not turn.present[n] else {})}
                                                 for n in self.feature_sets}}
        if target.regression:
            result["score"] = round(float(output[0]), 4)
        else:
            probs = torch.softmax(output.float(), dim=-1).numpy()
            labels = target.labels or []
            order = np.argsort(-probs)
            result["label"] = labels[int(order[0])]
            result["probabilities"] = {labels[int(i)]: round(float(probs[i]), 4) for i in order}
        if self.evidence is not None:
            result["evidence"] = self._evidence(turn)
        return result

    def predict(self, **inputs: Any) -> dict[str, Any]:
        """One utterance on its own (a dialogue of one turn for context heads)."""
        turn = self.encode(**inputs)
        if not any(turn.present.values()):
            why = "; ".join(f"{n}: {r}" for n, r in turn.reasons.items())
            raise UserError(f"no modality of this checkpoint could be encoded ({why})")
        return self.describe(self._outputs([turn])[-1], turn)

    def add_turn(self, conversation: Conversation, max_turns: int, **inputs: Any) -> dict[str, Any]:
        """Append a turn and predict it from the turns so far (a causal context head sees no future)."""
        turn = self.encode(**inputs)
        conversation.turns.append(turn)
        del conversation.turns[:-max_turns]
        out = self.describe(self._outputs(conversation.turns)[-1], turn)
        out["turn"] = len(conversation.turns) - 1
        out["causal"] = bool(getattr(self.model.params, "causal", not self.model.sequence))
        return out

    # ----- evidence ----------------------------------------------------------------------
    def _open_evidence(self, store_path: Path | str | None) -> Any:
        """The store (a path or URL; by default the training store) and its index over this checkpoint's
        feature sets, or None."""
        if store_path is None:
            store_path = (self.meta.get("store") or {}).get("path")
        if not store_path:
            return None
        try:
            from emostore.search.index import NearestIndex, list_indexes
            from emostore.store import Store

            store = Store.open(str(store_path), mode="r")
            for name in list_indexes(store):
                idx = NearestIndex.load(store, name)
                feats = idx.meta.get("features", [])
                if "checkpoint" not in idx.meta and feats and set(feats) <= set(self.feature_sets) \
                        and not idx.stale_reasons(store):
                    return store, idx
        except Exception:  # noqa: BLE001  (evidence is optional: a broken index never stops prediction)
            return None
        return None

    def _evidence(self, turn: Encoded, k: int = 5) -> list[dict[str, Any]]:
        from emostore.search.index import combine

        store, idx = self.evidence
        feats = idx.meta["features"]
        if not all(turn.present.get(f) for f in feats):
            return []
        sims, rows = idx.search(combine([turn.raw[f][None, :] for f in feats], feats,
                                        idx.meta.get("standardisation")), k)
        table = store.table
        return [{"id": table["id"].iat[int(r)], "text": table["text"].iat[int(r)],
                 "label": table["emotion"].iat[int(r)], "similarity": round(float(s), 4)}
                for s, r in zip(sims[0], rows[0]) if r >= 0]
