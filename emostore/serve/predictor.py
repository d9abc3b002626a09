"""Prediction on new utterances: the checkpoint's own encoders, its normalisation, its head.

The encoders are rebuilt from the feature-set configurations saved in the checkpoint, so a new
utterance is encoded exactly as the training rows were. A modality without input is masked, as
in training. Conversations keep their encoded turns, so each new turn costs one encoding.

Everything works on lists of requests, so that the server can batch them: :meth:`Predictor.encode_many`
makes one ``encode_rows`` call per feature set for the whole list (one forward pass of a text
model), and :meth:`Predictor.predict_many` one forward pass of the head. A single prediction is
a list of one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from emostore.core.runtime import resolve_device
from emostore.errors import UserError
from emostore.extract.base import Encoder, rebuild_encoder
from emostore.heads import checkpoint as ckpt_io

log = logging.getLogger("emostore.serve")

#: Which inputs can feed which modality, in order of preference.
SOURCES = {"text": ("text",), "audio": ("audio", "video"), "visual": ("video", "image")}
INPUTS = ("text", "audio", "video", "image")


@dataclass(frozen=True)
class Inputs:
    """What one request gives: a text and/or media files, and who spoke."""

    text: str | None = None
    audio: Path | None = None
    video: Path | None = None
    image: Path | None = None
    speaker: str | None = None
    #: The span of the media files to use, in seconds (None: from the start, to the end).
    start: float | None = None
    end: float | None = None

    def get(self, key: str) -> Any:
        return getattr(self, key)

    @property
    def media(self) -> bool:
        return any(self.get(k) is not None for k in ("audio", "video", "image"))


@dataclass
class Encoded:
    """One utterance, encoded: raw vectors per feature set, and which are present."""

    raw: dict[str, np.ndarray] = field(default_factory=dict)
    present: dict[str, bool] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    speaker: str | None = None
    text: str | None = None
    #: Frame sequences, for the feature sets a frame head reads as frames.
    frames: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Conversation:
    turns: list[Encoded] = field(default_factory=list)


class Predictor:
    """Load once, predict many times (the CLI's ``predict`` and the HTTP server share it).

    Not thread-safe: the server gives each encoder to one thread (see :mod:`emostore.serve.batcher`).
    """

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
        self._norm = {name: (np.asarray(s["mean"], np.float32), np.asarray(s["std"], np.float32))
                      for name, s in self.checkpoint.norm.items()}
        #: Feature sets the head reads as frame sequences (frame heads only).
        self.frame_sets = [f["name"] for f in self.meta["feature_sets"] if self.model.frames and f.get("frame_dim")]
        self.evidence = self._open_evidence(evidence_store, explicit=evidence_store is not None)

    # ----- inputs ------------------------------------------------------------------------
    @property
    def modalities(self) -> list[str]:
        return [f.split("/", 1)[0] for f in self.feature_sets]

    @property
    def text_feature_sets(self) -> list[str]:
        return [f for f in self.feature_sets if f.startswith("text/")]

    @property
    def media_feature_sets(self) -> list[str]:
        return [f for f in self.feature_sets if not f.startswith("text/")]

    @property
    def info(self) -> dict[str, Any]:
        """What this predictor predicts with (for ``/health``)."""
        m = self.meta
        return {"head": m["head"], "target": m["target"]["name"], "labels": m["target"]["labels"],
                "feature_sets": self.feature_sets, "sequence": bool(self.model.sequence),
                "causal": self.causal}

    @property
    def causal(self) -> bool:
        """A turn's prediction never changes once made (per-utterance heads are trivially causal)."""
        return bool(getattr(self.model.params, "causal", not self.model.sequence))

    def check(self, inputs: Inputs) -> Inputs:
        """The inputs with a blank text dropped; a :class:`UserError` when nothing usable is given."""
        text = inputs.text if inputs.text and inputs.text.strip() else None
        if text is not None:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise UserError(f"the text is not valid Unicode (a lone surrogate at character {exc.start})") from None
        inputs = replace(inputs, text=text)
        if not any(inputs.get(k) is not None for k in INPUTS):
            raise UserError("nothing to predict from: give a text and/or an audio, video or image file")
        for key in ("audio", "video", "image"):
            if inputs.get(key) is not None and not Path(inputs.get(key)).exists():
                raise UserError(f"{key} file {inputs.get(key)} does not exist")
        return inputs

    def source(self, inputs: Inputs, modality: str) -> str | None:
        """Which input feeds ``modality`` (an audio file before a video's soundtrack, a video before an image)."""
        return next((s for s in SOURCES.get(modality, ()) if inputs.get(s) is not None), None)

    def unused_inputs(self, inputs: Inputs) -> dict[str, str]:
        """Inputs (or the soundtrack or frames of a video) that this checkpoint does not use, and why."""
        mods = set(self.modalities)
        fed = {m: self.source(inputs, m) for m in mods}
        out = {}
        for key in INPUTS:
            if inputs.get(key) is None:
                continue
            could = [m for m, srcs in SOURCES.items() if key in srcs]
            why = {m: (f"the {fed[m]} input feeds {m}" if m in mods else f"the checkpoint has no {m} feature set")
                   for m in could if fed.get(m) != key}
            if len(why) == len(could):
                out[key] = "not used: " + "; ".join(why.values())
            elif why:  # a video used for one modality only
                (m, reason), = why.items()
                out[key] = f"its {'soundtrack' if m == 'audio' else 'frames'}: not used ({reason})"
        return out

    # ----- encoders ----------------------------------------------------------------------
    def encoder(self, name: str) -> Encoder:
        if name not in self._encoders:
            f = next(f for f in self.meta["feature_sets"] if f["name"] == name)
            modality, short = name.split("/", 1)
            self._encoders[name] = rebuild_encoder(modality, f["config"], name=short, device=self.device,
                                                   store=self.checkpoint.store_address)
        return self._encoders[name]

    def load_encoders(self) -> None:
        for name in self.feature_sets:
            self.encoder(name)

    def input_table(self, items: list[Inputs], sources: list[str],
                    histories: list[list[Encoded]] | None = None) -> tuple[pd.DataFrame, np.ndarray]:
        """The utterance-table rows that ``encode_rows`` reads for these requests, and the row of each
        request (request i: its text and the media file of ``sources[i]``). Each request is its own
        dialogue, after the earlier turns of its conversation (``histories[i]``, text only), so an
        encoder that reads surrounding turns sees a live turn exactly as a stored one, with no future."""
        rows: list[dict[str, Any]] = []
        where = []
        for i, (it, src) in enumerate(zip(items, sources)):
            past = histories[i] if histories is not None else []
            for t, h in enumerate(past):
                rows.append({"id": f"input{i}-turn{t}", "dialogue": f"input{i}", "turn": t, "speaker": h.speaker,
                             "text": h.text, "media": None, "start": np.nan, "end": np.nan, "split": None})
            where.append(len(rows))
            rows.append({"id": f"input{i}", "dialogue": f"input{i}", "turn": len(past), "speaker": it.speaker,
                         "text": it.text, "media": None if src == "text" else str(it.get(src)),
                         "start": np.nan if it.start is None else it.start,
                         "end": np.nan if it.end is None else it.end, "split": None})
        return pd.DataFrame(rows), np.asarray(where, dtype=np.int64)

    def encode_many(self, items: list[Inputs], feature_sets: list[str] | None = None,
                    into: list[Encoded] | None = None, histories: list[list[Encoded]] | None = None,
                    ) -> tuple[list[Encoded], dict[int, Exception]]:
        """Encode checked ``items`` for ``feature_sets`` (default all) with one ``encode_rows`` call per
        feature set. Returns the encodings (``into``, filled, when given) and the requests whose encoding
        raised: when a call over several requests raises, each is retried alone so only the bad one fails.
        ``histories[i]``: the earlier turns of request i's conversation (see :meth:`input_table`)."""
        turns = into if into is not None else [Encoded(speaker=it.speaker, text=it.text) for it in items]
        failed: dict[int, Exception] = {}
        for name in feature_sets if feature_sets is not None else self.feature_sets:
            modality = name.split("/", 1)[0]
            todo: list[tuple[int, str]] = []
            for i, it in enumerate(items):
                src = self.source(it, modality)
                if src is None:
                    turns[i].present[name] = False
                    turns[i].reasons[name] = f"no {' or '.join(SOURCES.get(modality, (modality,)))} given"
                elif i not in failed:
                    todo.append((i, src))
            if not todo:
                continue
            for part, out in self._encode_parts(name, items, todo, histories, failed):
                for j, (i, _) in enumerate(part):
                    self._keep_output(turns[i], name, out, j)
        return turns, failed

    def _encode_parts(self, name: str, items: list[Inputs], todo: list[tuple[int, str]],
                      histories: list[list[Encoded]] | None, failed: dict[int, Exception]) -> list[tuple[list, Any]]:
        """``todo`` encoded together; when that raises, one by one, each request that raises put in ``failed``."""
        try:
            return [(todo, self._encode_rows(name, items, todo, histories))]
        except Exception as exc:  # noqa: BLE001  (retried one by one below)
            if len(todo) == 1:
                failed[todo[0][0]] = exc
                return []
            log.warning("encoding %d requests for %s failed together (%s); retrying them one by one",
                        len(todo), name, exc)
        outs = []
        for one in todo:
            try:
                outs.append(([one], self._encode_rows(name, items, [one], histories)))
            except Exception as exc1:  # noqa: BLE001  (this request fails alone)
                failed[one[0]] = exc1
        return outs

    def _keep_output(self, turn: Encoded, name: str, out: Any, j: int) -> None:
        """Row ``j`` of an encoder's output into ``turn``: its vector, or why it is missing; its frames."""
        turn.present[name] = bool(out.ok[j])
        turn.reasons[name] = "" if out.ok[j] else out.reasons[j]
        if not out.ok[j]:
            return
        turn.raw[name] = np.asarray(out.values[j], dtype=np.float32)
        if name in self.frame_sets:
            seq = None if out.sequences is None else out.sequences[j]
            if seq is None or not len(seq):
                turn.present[name], turn.reasons[name] = False, "no frames"
            else:
                turn.frames[name] = np.asarray(seq, dtype=np.float32)

    def _encode_rows(self, name: str, items: list[Inputs], todo: list[tuple[int, str]],
                     histories: list[list[Encoded]] | None) -> Any:
        table, where = self.input_table([items[i] for i, _ in todo], [s for _, s in todo],
                                        None if histories is None else [histories[i] for i, _ in todo])
        return self.encoder(name).encode_rows(table, where)

    def encode(self, *, text: str | None = None, audio: Path | None = None, video: Path | None = None,
               image: Path | None = None, speaker: str | None = None, start: float | None = None,
               end: float | None = None, history: list[Encoded] | None = None) -> Encoded:
        """One utterance through every feature set of the checkpoint; ``history`` (the earlier turns of
        its conversation) is the context of encoders that read surrounding turns."""
        turns, failed = self.encode_many([self.check(Inputs(text, audio, video, image, speaker, start, end))],
                                         histories=[history or []])
        if failed:
            raise failed[0]
        return turns[0]

    # ----- the head ----------------------------------------------------------------------
    def _tensors(self, turns: list[Encoded]) -> tuple[list[torch.Tensor], torch.Tensor]:
        xs, masks = [], []
        for f in self.meta["feature_sets"]:
            name, dim = f["name"], f["dim"]
            mean, std = self._norm[name]
            rows = [((t.raw[name] - mean) / std) if t.present.get(name) else np.zeros(dim, np.float32)
                    for t in turns]
            xs.append(torch.from_numpy(np.stack(rows).astype(np.float32)).to(self.device))
            masks.append([bool(t.present.get(name)) for t in turns])
        return xs, torch.tensor(masks, dtype=torch.bool, device=self.device).T

    def _frames(self, turns: list[Encoded]) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Per feature set: the turns' standardised frames, padded (cropped in the middle like in
        evaluation), or None for feature sets the head does not read as frames."""
        from emostore.heads.data import Frames

        out: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        crop = int(getattr(self.model.params, "max_frames", 0) or 0)
        for f in self.meta["feature_sets"]:
            name = f["name"]
            if name not in self.frame_sets:
                out.append(None)
                continue
            stats = self.checkpoint.norm[name]
            mean = np.asarray(stats["frame_mean"], np.float32)
            std = np.asarray(stats["frame_std"], np.float32)
            seqs = [np.nan_to_num((t.frames[name] - mean) / std, nan=0.0, posinf=0.0, neginf=0.0)
                    if t.present.get(name) else np.zeros((0, len(mean)), np.float32) for t in turns]
            lengths = torch.tensor([len(q) for q in seqs], dtype=torch.long)
            frames = Frames(torch.from_numpy(np.concatenate(seqs).astype(np.float32)),
                            torch.cumsum(lengths, 0) - lengths, lengths).to(self.device)
            out.append(frames.batch(torch.arange(len(turns), device=self.device), crop))
        return out

    @torch.no_grad()
    def _outputs(self, turns: list[Encoded]) -> torch.Tensor:
        """Head outputs for every turn of one conversation (in order; sequence heads see them all)."""
        xs, mask = self._tensors(turns)
        if self.model.frames:  # per utterance: each turn with its own frames
            return self.model(xs, mask, self._frames(turns)).cpu()
        if self.model.sequence:
            seen: dict[str, int] = {}
            speakers = torch.tensor([[seen.setdefault(t.speaker, len(seen)) if t.speaker else -1 for t in turns]],
                                    device=self.device)
            valid = torch.ones(1, len(turns), dtype=torch.bool, device=self.device)
            return self.model([x.unsqueeze(0) for x in xs], mask.unsqueeze(0), valid, speakers)[0].cpu()
        return self.model(xs, mask).cpu()

    @torch.no_grad()
    def _outputs_alone(self, turns: list[Encoded]) -> torch.Tensor:
        """Head outputs for independent utterances in one forward pass (for a sequence head, a
        batch of dialogues of one turn each)."""
        xs, mask = self._tensors(turns)
        if self.model.frames:
            return self.model(xs, mask, self._frames(turns)).cpu()
        if self.model.sequence:
            n = len(turns)
            speakers = torch.tensor([[0 if t.speaker else -1] for t in turns], device=self.device)
            valid = torch.ones(n, 1, dtype=torch.bool, device=self.device)
            return self.model([x.unsqueeze(1) for x in xs], mask.unsqueeze(1), valid, speakers)[:, 0].cpu()
        return self.model(xs, mask).cpu()

    def describe(self, output: torch.Tensor, turn: Encoded, unused: dict[str, str] | None = None,
                 evidence: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        target = self.checkpoint.target
        result: dict[str, Any] = {"target": target.name, "head": self.checkpoint.head,
                                  "modalities": {n: {"present": turn.present[n], **({"reason": turn.reasons[n]}
                                                                                   if not turn.present[n] else {})}
                                                 for n in self.feature_sets}}
        if unused:
            result["unused_inputs"] = unused
        if not torch.isfinite(output).all():  # never an answer of NaN: a bug or an input beyond the checkpoint
            raise UserError(f"the head gave a non-finite output for this input ({self.checkpoint.path}); no "
                            "prediction is made")
        if target.regression:
            result["score"] = round(float(output[0]), 4)
        else:
            probs = torch.softmax(output.float(), dim=-1).numpy()
            labels = target.labels or []
            order = np.argsort(-probs)
            result["label"] = labels[int(order[0])]
            result["probabilities"] = {labels[int(i)]: round(float(probs[i]), 4) for i in order}
        if evidence is not None:
            result["evidence"] = evidence
        return result

    @staticmethod
    def require_some(turn: Encoded) -> None:
        if not any(turn.present.values()):
            why = "; ".join(f"{n}: {r}" for n, r in turn.reasons.items())
            raise UserError(f"no modality of this checkpoint could be encoded ({why})")

    def predict_encoded(self, items: list[Inputs], turns: list[Encoded]) -> list[dict[str, Any] | Exception]:
        """Results for independent, encoded utterances: one head forward pass and one evidence search for all."""
        out: list[dict[str, Any] | Exception] = [UserError("not predicted")] * len(turns)
        ok = []
        for i, t in enumerate(turns):
            try:
                self.require_some(t)
                ok.append(i)
            except UserError as exc:
                out[i] = exc
        if ok:
            outputs = self._outputs_alone([turns[i] for i in ok])
            evidence = self._evidence_many([turns[i] for i in ok])
            for j, i in enumerate(ok):
                out[i] = self.describe(outputs[j], turns[i], self.unused_inputs(items[i]),
                                       evidence[j] if evidence is not None else None)
        return out

    def predict_many(self, items: list[Inputs]) -> list[dict[str, Any] | Exception]:
        """Each request on its own, all encoded and predicted together; a bad one gets its error alone."""
        checked: list[Inputs | None] = []
        out: list[dict[str, Any] | Exception] = [UserError("not predicted")] * len(items)
        for i, it in enumerate(items):
            try:
                checked.append(self.check(it))
            except UserError as exc:
                checked.append(None)
                out[i] = exc
        good = [i for i, c in enumerate(checked) if c is not None]
        goods = [checked[i] for i in good]
        turns, failed = self.encode_many(goods)  # type: ignore[arg-type]
        keep = [j for j in range(len(good)) if j not in failed]
        for j, exc in failed.items():
            out[good[j]] = exc
        for j, res in zip(keep, self.predict_encoded([goods[j] for j in keep], [turns[j] for j in keep])):  # type: ignore[misc]
            out[good[j]] = res
        return out

    def predict(self, **inputs: Any) -> dict[str, Any]:
        """One utterance on its own (a dialogue of one turn for context heads)."""
        result = self.predict_many([Inputs(**inputs)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def add_encoded_turn(self, conversation: Conversation, max_turns: int, turn: Encoded,
                         inputs: Inputs) -> dict[str, Any]:
        """Append an encoded turn and predict it from the turns so far (a causal context head sees no future)."""
        self.require_some(turn)
        conversation.turns.append(turn)
        del conversation.turns[:-max_turns]
        ev = self._evidence_many([turn])
        out = self.describe(self._outputs(conversation.turns)[-1], turn, self.unused_inputs(inputs),
                            ev[0] if ev is not None else None)
        out["turn"] = len(conversation.turns) - 1
        out["causal"] = self.causal
        return out

    @staticmethod
    def history(conversation: Conversation | None, max_turns: int) -> list[Encoded]:
        """The turns a new turn of ``conversation`` is encoded after (text encoders that read past turns)."""
        if conversation is None or max_turns <= 1:
            return []
        return conversation.turns[-(max_turns - 1):]

    def add_turn(self, conversation: Conversation, max_turns: int, **inputs: Any) -> dict[str, Any]:
        """Encode a turn after the conversation's earlier turns, append it and predict it from the turns so far."""
        checked = self.check(Inputs(**inputs))
        turn = self.encode(**vars(checked), history=self.history(conversation, max_turns))
        return self.add_encoded_turn(conversation, max_turns, turn, checked)

    # ----- evidence ----------------------------------------------------------------------
    def _open_evidence(self, store_path: Path | str | None, explicit: bool) -> Any:
        """The first up-to-date index of the training store (or ``store_path``, a path or URL) over this
        checkpoint's feature sets; ``None`` (with a log line saying why) when there is none."""
        if store_path is None:
            store_path = self.checkpoint.store_address
        say = log.warning if explicit else log.info
        if not store_path:
            return None
        try:
            from emostore.search.index import NearestIndex, list_indexes
            from emostore.store import Store

            store = Store.open(str(store_path), mode="r")
            names = list_indexes(store)
            if not names:
                say("no evidence: %s has no search index (build one with `emostore index build`)", store_path)
                return None
            for name in names:
                idx = NearestIndex.load(store, name)
                feats = idx.meta.get("features", [])
                if "checkpoint" in idx.meta or not feats or not set(feats) <= set(self.feature_sets):
                    continue
                stale = idx.stale_reasons(store)
                if stale:
                    say("evidence: index %s of %s skipped, it is stale (%s)", name, store_path, "; ".join(stale))
                    continue
                return store, idx
            say("no evidence: no up-to-date index of %s covers only %s", store_path, ", ".join(self.feature_sets))
        except Exception as exc:  # noqa: BLE001  (evidence is optional: a broken index never stops prediction)
            log.warning("no evidence: opening the indexes of %s failed: %s", store_path, exc)
        return None

    def _evidence_many(self, turns: list[Encoded], k: int = 5) -> list[list[dict[str, Any]]] | None:
        """The ``k`` most similar stored utterances of each turn, in one search (``None`` without an index)."""
        if self.evidence is None:
            return None
        from emostore.search.index import combine

        store, idx = self.evidence
        feats = idx.meta["features"]
        out: list[list[dict[str, Any]]] = [[] for _ in turns]
        ready = [i for i, t in enumerate(turns) if all(t.present.get(f) for f in feats)]
        if not ready:
            return out
        try:
            queries = combine([np.stack([turns[i].raw[f] for i in ready]) for f in feats], feats,
                              idx.meta.get("standardisation"))
            sims, rows = idx.search(queries, k)
            wanted = np.unique(rows[rows >= 0])
            table = store.rows(wanted, ["id", "text", "emotion"])  # only the neighbours' rows
            at = {int(r): k for k, r in enumerate(wanted)}
            for j, i in enumerate(ready):
                out[i] = [{"id": table["id"].iat[at[int(r)]], "text": table["text"].iat[at[int(r)]],
                           "label": table["emotion"].iat[at[int(r)]], "similarity": round(float(s), 4)}
                          for s, r in zip(sims[j], rows[j]) if r >= 0]
        except Exception as exc:  # noqa: BLE001  (evidence is optional; the prediction stands)
            log.warning("evidence lookup failed (%s: %s); answering without evidence", type(exc).__name__, exc)
        return out
