"""The model input of a conversation turn: the utterance first, its surrounding turns second.

EmoBERTa-style: the first segment is the utterance as ``Speaker: text``; the second holds up to
``past`` earlier and ``future`` later turns of the same dialogue, in dialogue order, the earlier
and later ones separated by the tokenizer's separator. When the input is too long, context
tokens are dropped from the far end (the turns farthest from the utterance go first), so the
utterance itself is never cut. Fine-tuning, extraction and ``predict``/``serve`` all build their
inputs here, so a live turn is encoded exactly like a training row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from emostore.errors import UserError

#: Name of this input format (recorded with every model and feature set that uses it).
INPUT_FORMAT = "utterance-first-v1"
#: Pooling of the fine-tuned encoders: mean of the last hidden states over the utterance segment
#: (its tokens and the special tokens around it), so context informs the vector without diluting it.
POOLING = "utterance-mean"


@dataclass(frozen=True)
class DialogueFormat:
    """How a turn becomes text: how many turns around it, and whether speakers are named."""

    past: int = 0
    future: int = 0
    speaker: bool = True

    def __post_init__(self) -> None:
        if self.past < 0 or self.future < 0:
            raise UserError(f"--past and --future must be 0 or more, got {self.past} and {self.future}")

    @property
    def context(self) -> bool:
        return self.past > 0 or self.future > 0

    def to_dict(self) -> dict[str, Any]:
        return {"format": INPUT_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DialogueFormat:
        if d.get("format", INPUT_FORMAT) != INPUT_FORMAT:
            raise UserError(f"unknown input format {d.get('format')!r}; this emostore version reads {INPUT_FORMAT}")
        return cls(int(d.get("past", 0)), int(d.get("future", 0)), bool(d.get("speaker", True)))


@dataclass
class Turn:
    """The text of one turn's input: its own line, and context lines nearest first."""

    utterance: str
    past: list[str]      # nearest first
    future: list[str]    # nearest first


def line(speaker: Any, text: str, with_speaker: bool) -> str:
    """``Speaker: text`` (or the text alone, when unnamed or speakers are off)."""
    return f"{speaker}: {text}" if with_speaker and isinstance(speaker, str) and speaker else text


def _has_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def dialogue_order(table: pd.DataFrame) -> tuple[list[np.ndarray], np.ndarray]:
    """Rows of each dialogue in turn order, and each row's (dialogue index, position).

    A row without a dialogue is a dialogue of its own.
    """
    n = len(table)
    keys = [d if isinstance(d, str) and d else f"\0{i}" for i, d in enumerate(table["dialogue"])]
    turns = pd.to_numeric(table["turn"], errors="coerce").fillna(0).to_numpy() if "turn" in table else np.zeros(n)
    frame = pd.DataFrame({"d": keys, "t": turns, "r": np.arange(n)})
    dialogues = [g["r"].to_numpy() for _, g in frame.sort_values(["d", "t", "r"], kind="stable")
                 .groupby("d", sort=False)]
    where = np.zeros((n, 2), dtype=np.int64)
    for k, rows in enumerate(dialogues):
        where[rows, 0] = k
        where[rows, 1] = np.arange(len(rows))
    return dialogues, where


def dialogue_turns(table: pd.DataFrame, rows: np.ndarray, fmt: DialogueFormat) -> list[Turn | None]:
    """The input text of each of ``rows`` (None for a row without text); context comes from the
    whole ``table``, skipping turns without text."""
    texts, speakers = table["text"].to_numpy(), table["speaker"].to_numpy()
    if fmt.context:
        dialogues, where = dialogue_order(table)
    out: list[Turn | None] = []
    for r in rows:
        if not _has_text(texts[r]):
            out.append(None)
            continue
        past: list[str] = []
        future: list[str] = []
        if fmt.context:
            seq = dialogues[where[r, 0]]
            pos = int(where[r, 1])
            past = [line(speakers[p], texts[p], fmt.speaker) for p in seq[:pos][::-1] if _has_text(texts[p])]
            future = [line(speakers[p], texts[p], fmt.speaker) for p in seq[pos + 1:] if _has_text(texts[p])]
        out.append(Turn(line(speakers[r], texts[r], fmt.speaker), past[:fmt.past], future[:fmt.future]))
    return out


@dataclass
class TokenizedTurn:
    input_ids: list[int]
    type_ids: list[int]
    #: The first ``utterance_len`` positions are the utterance segment (with its special tokens).
    utterance_len: int
    #: The utterance itself had to be cut (longer than the whole budget).
    cut: bool
    context_turns: int


class TurnTokenizer:
    """Token ids of turns for one Hugging Face tokenizer (needs its fast ``tokenizers`` backend)."""

    def __init__(self, tokenizer: Any, max_length: int):
        from tokenizers import Tokenizer

        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise UserError(f"tokenizer {type(tokenizer).__name__} has no fast (tokenizers) backend; "
                            "fine-tuned text encoders need one")
        self.tok = Tokenizer.from_str(backend.to_str())  # a copy: no truncation or padding of its own
        self.tok.no_truncation()
        self.tok.no_padding()
        self.max_length = int(max_length)
        self.specials_single = self.tok.num_special_tokens_to_add(False)
        self.specials_pair = self.tok.num_special_tokens_to_add(True)
        sep = getattr(tokenizer, "sep_token", None)
        self.sep = self.tok.encode(sep, add_special_tokens=False) if sep else None
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.with_type_ids = "token_type_ids" in getattr(tokenizer, "model_input_names", [])
        if self.max_length <= self.specials_pair:
            raise UserError(f"--max-length {self.max_length} leaves no room for any text "
                            f"({self.specials_pair} special tokens)")

    def utterance_tokens(self, turns: list[Turn | None]) -> list[int]:
        """Length in tokens of each turn's utterance segment (0 for None), special tokens excluded."""
        texts = [t.utterance for t in turns if t is not None]
        lengths = iter(len(e.ids) for e in self.tok.encode_batch(texts, add_special_tokens=False))
        return [next(lengths) if t is not None else 0 for t in turns]

    def room_for_context(self, utterance_tokens: int) -> int:
        return self.max_length - self.specials_pair - utterance_tokens

    def encode(self, turns: list[Turn | None]) -> list[TokenizedTurn | None]:
        from tokenizers import Encoding

        out: list[TokenizedTurn | None] = []
        for turn in turns:
            if turn is None:
                out.append(None)
                continue
            a = self.tok.encode(turn.utterance, add_special_tokens=False)
            room = self.room_for_context(len(a))
            context = turn.past or turn.future
            if not context or room <= 0:
                cut = len(a) > self.max_length - self.specials_single
                if cut:
                    a.truncate(self.max_length - self.specials_single, direction="right")
                enc = self.tok.post_process(a, None, add_special_tokens=True)
                out.append(TokenizedTurn(enc.ids, enc.type_ids, len(enc.ids), cut, 0))
                continue
            use_sep = self.sep is not None and bool(turn.past) and bool(turn.future)
            budget = room - (len(self.sep.ids) if use_sep and self.sep is not None else 0)
            past, future = self._nearest_first(turn, budget)
            parts = past[::-1] + ([self.sep] if use_sep and past and future and self.sep else []) + future
            if not parts:
                enc = self.tok.post_process(a, None, add_special_tokens=True)
                out.append(TokenizedTurn(enc.ids, enc.type_ids, len(enc.ids), False, 0))
                continue
            b = Encoding.merge(parts, growing_offsets=True)
            enc = self.tok.post_process(a, b, add_special_tokens=True)
            seq = enc.sequence_ids
            first_b = seq.index(1) if 1 in seq else len(seq)
            out.append(TokenizedTurn(enc.ids, enc.type_ids, first_b, False, len(past) + len(future)))
        return out

    def _nearest_first(self, turn: Turn, budget: int) -> tuple[list[Any], list[Any]]:
        """Context encodings that fit ``budget``, nearest turns first; the first that does not fit
        whole is cut at its far end and ends the context."""
        past_enc = self.tok.encode_batch(turn.past, add_special_tokens=False) if turn.past else []
        future_enc = self.tok.encode_batch(turn.future, add_special_tokens=False) if turn.future else []
        past: list[Any] = []
        future: list[Any] = []
        for d in range(max(len(past_enc), len(future_enc))):
            for side, chosen, far in ((past_enc, past, "left"), (future_enc, future, "right")):
                if d >= len(side) or budget <= 0:
                    continue
                e = side[d]
                if len(e.ids) > budget:
                    e.truncate(budget, direction=far)
                chosen.append(e)
                budget -= len(e.ids)
            if budget <= 0:
                break
        return past, future

    def collate(self, items: list[TokenizedTurn]) -> dict[str, Any]:
        """One padded batch: input_ids, attention_mask, (token_type_ids), utterance_mask."""
        import torch

        width = max(len(t.input_ids) for t in items)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        types = torch.zeros((len(items), width), dtype=torch.long)
        attention = torch.zeros((len(items), width), dtype=torch.long)
        utterance = torch.zeros((len(items), width), dtype=torch.bool)
        for i, t in enumerate(items):
            n = len(t.input_ids)
            ids[i, :n] = torch.tensor(t.input_ids)
            types[i, :n] = torch.tensor(t.type_ids)
            attention[i, :n] = 1
            utterance[i, :t.utterance_len] = True
        batch = {"input_ids": ids, "attention_mask": attention, "utterance_mask": utterance}
        if self.with_type_ids:
            batch["token_type_ids"] = types
        return batch


#: The batch entries a Hugging Face encoder takes.
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def pool(hidden: Any, utterance_mask: Any) -> Any:
    """Mean of ``hidden`` [B, T, H] over the utterance positions [B, T]."""
    m = utterance_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def embed(backbone: Any, batch: dict[str, Any]) -> Any:
    """The pooled vector of each input of a :meth:`TurnTokenizer.collate` batch."""
    hidden = backbone(**{k: batch[k] for k in MODEL_INPUTS if k in batch}).last_hidden_state
    return pool(hidden, batch["utterance_mask"])
