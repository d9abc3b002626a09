"""The input of a turn: utterance first as 'Speaker: text', context second, cut at the far end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from emostore.errors import UserError
from emostore.extract.dialogue_input import DialogueFormat, Turn, TurnTokenizer, dialogue_turns
from emostore.extract.finetuned import load_transformer
from emostore.ingest.base import finalize


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return load_transformer("minilm")[0]


def table() -> pd.DataFrame:
    rows = [
        ("a0", "d1", 0, "Ann", "I got the job!"),
        ("a1", "d1", 1, "Ben", "That's wonderful news."),
        ("a2", "d1", 2, "Ann", "   "),
        ("a3", "d1", 3, "Ben", "When do you start?"),
        ("a4", "d1", 4, "Ann", "Monday."),
        ("b0", "d2", 0, None, "Hello there."),
        ("b1", "d2", 1, "Dan", "Hi."),
    ]
    df = pd.DataFrame(rows, columns=["id", "dialogue", "turn", "speaker", "text"])
    return finalize(df.sample(frac=1.0, random_state=1), "toy", [], "toy")  # table order must not matter


def by_id(t: pd.DataFrame, fmt: DialogueFormat) -> dict[str, Turn | None]:
    return dict(zip(t["id"], dialogue_turns(t, np.arange(len(t)), fmt)))


def test_turns_in_dialogue_order_nearest_first_skipping_empty_turns():
    t = table()
    turns = by_id(t, DialogueFormat(past=2, future=1))
    assert turns["a3"] == Turn("Ben: When do you start?", ["Ben: That's wonderful news.", "Ann: I got the job!"],
                               ["Ann: Monday."])
    assert turns["a2"] is None  # no text: no input, even with context
    assert turns["a0"] == Turn("Ann: I got the job!", [], ["Ben: That's wonderful news."])
    assert turns["b0"].utterance == "Hello there."  # unnamed speaker: the text alone
    assert turns["b1"].past == ["Hello there."] and turns["b1"].future == []
    plain = by_id(t, DialogueFormat(past=0, future=0, speaker=False))
    assert plain["a3"] == Turn("When do you start?", [], [])
    with pytest.raises(UserError, match="--past"):
        DialogueFormat(past=-1)


def test_context_is_cut_at_the_far_end_and_the_utterance_never(minilm_tokenizer):
    tok = minilm_tokenizer
    utterance = "Ben: When do you start?"
    turn = Turn(utterance, ["Ann: one two three four five six", "Cat: far far away in the past"],
                ["Dan: seven eight nine ten eleven twelve"])
    n_utt = len(tok(utterance, add_special_tokens=False)["input_ids"])
    for max_length in (64, 24, 16, n_utt + 4):
        enc = TurnTokenizer(tok, max_length).encode([turn])[0]
        tokens = tok.convert_ids_to_tokens(enc.input_ids)
        assert len(enc.input_ids) <= max_length
        # segment one is the whole utterance, whatever the budget
        assert tokens[:n_utt + 2] == ["[CLS]", *tok.tokenize(utterance), "[SEP]"]
        assert enc.utterance_len == n_utt + 2 and not enc.cut
    full = tok.convert_ids_to_tokens(TurnTokenizer(tok, 64).encode([turn])[0].input_ids)
    # past in dialogue order (farthest first), then the separator, then the future
    assert " ".join(full[n_utt + 2:]) == ("cat : far far away in the past ann : one two three four five six [SEP] "
                                          "dan : seven eight nine ten eleven twelve [SEP]")
    cut = tok.convert_ids_to_tokens(TurnTokenizer(tok, 24).encode([turn])[0].input_ids)
    # room: 24 - 3 specials - the utterance - 1 separator; the nearest past turn (8 tokens) fits whole,
    # the nearest future turn keeps its start, the farther past turn is dropped
    room = 24 - 3 - n_utt - 1
    future = tok.tokenize("Dan: seven eight nine ten eleven twelve")[:room - 8]
    assert 0 < len(future) < 8
    assert cut[n_utt + 2:] == [*tok.tokenize("Ann: one two three four five six"), "[SEP]", *future, "[SEP]"]


def test_long_utterance_without_context_is_cut_at_its_end(minilm_tokenizer):
    tok = minilm_tokenizer
    words = " ".join(f"w{i}" for i in range(40))
    enc = TurnTokenizer(tok, 16).encode([Turn(words, [], [])])[0]
    assert len(enc.input_ids) == 16 and enc.cut and enc.utterance_len == 16
    assert tok.convert_ids_to_tokens(enc.input_ids)[1:3] == tok.tokenize(words)[:2]


def test_batches_pad_and_mark_the_utterance(minilm_tokenizer):
    tt = TurnTokenizer(minilm_tokenizer, 32)
    items = tt.encode([Turn("A: hi", ["B: hello there"], []), Turn("A: a much longer line of text here", [], [])])
    batch = tt.collate(items)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, max(len(i.input_ids) for i in items))
    assert batch["utterance_mask"][0].sum() == items[0].utterance_len < items[0].input_ids.__len__()
    assert (batch["attention_mask"].sum(1).tolist() == [len(i.input_ids) for i in items])
    assert batch["token_type_ids"][0, items[0].utterance_len:len(items[0].input_ids)].eq(1).all()
