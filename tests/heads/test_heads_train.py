"""Every head trained on a real MELD subset (text/minilm), plus the training loop's guarantees."""

from __future__ import annotations

import heads_stores
import numpy as np
import pytest
import torch
import typer

from emostore.cli import _head_name
from emostore.heads.base import head_names
from emostore.heads.data import load_data
from emostore.heads.evaluate import evaluate_data
from emostore.heads.train import TrainConfig, drop_modalities, fit, predict_rows

FAST = TrainConfig(epochs=25, patience=5, device="cpu")


@pytest.fixture(scope="module")
def meld(tmp_path_factory, minilm_encoder):
    return load_data(heads_stores.meld_store(tmp_path_factory, minilm_encoder), ["text/minilm"], "emotion")


@pytest.fixture(scope="module", params=["sample", "meld"])
def text_data(request, tmp_path_factory, minilm_encoder):
    """The guarantees below hold on the bundled sample (always) and on real MELD text (when present)."""
    store = heads_stores.BASES[request.param](tmp_path_factory, minilm_encoder)
    return load_data(store, ["text/minilm"], "emotion")


def test_registry_lists_every_head_and_the_cli_offers_them() -> None:
    names = head_names()
    assert names[:7] == ["linear", "mlp", "late", "gated", "attention", "context", "knn"]
    assert [_head_name(n) for n in names] == names  # the CLI accepts exactly what the registry has
    with pytest.raises(typer.BadParameter, match="choose from linear, mlp"):
        _head_name("no-such-head")


def test_meld_subset_data(meld) -> None:
    assert meld.target.labels == ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
    assert len(meld.rows("train")) == 1024 and len(meld.rows("dev")) == 336 and len(meld.rows("test")) == 396
    # dialogues are in turn order and never mix splits
    for rows in meld.dialogues:
        assert len(set(meld.split[rows])) == 1
    d0 = meld.dialogues[0]
    assert [meld.ids[r].rsplit("utt", 1)[1] for r in d0] == [str(i) for i in range(len(d0))]


@pytest.mark.parametrize("head", ["linear", "mlp", "late", "gated", "attention", "context", "knn"])
def test_head_learns_meld_emotions(meld, head: str) -> None:
    result = fit(meld, head, config=FAST)
    ev = evaluate_data(result.model, meld, "test")
    baseline = heads_stores.majority_weighted_f1(meld)
    assert ev.metrics["n"] == 396
    assert ev.metrics["weighted_f1"] > baseline + 0.08, (head, ev.metrics["weighted_f1"], baseline)
    assert len(set(ev.y_pred.tolist())) >= 3  # not a majority-class predictor
    if result.model.trainable:
        assert 1 <= result.best_epoch <= result.epochs_run and result.history


def test_training_is_reproducible(text_data) -> None:
    meld = text_data
    config = TrainConfig(epochs=4, patience=10, device="cpu", seed=3)
    a, b = fit(meld, "mlp", config=config), fit(meld, "mlp", config=config)
    c = fit(meld, "mlp", config=TrainConfig(epochs=4, patience=10, device="cpu", seed=4))
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert [h["dev_weighted_f1"] for h in a.history] == [h["dev_weighted_f1"] for h in b.history]


@pytest.mark.parametrize("encoder", ["gru", "lstm", "transformer"])
def test_causal_context_ignores_later_turns(text_data, encoder: str) -> None:
    """A causal context head's prediction for a turn is final: changing later turns cannot move it;
    the bidirectional head does look ahead."""
    meld = text_data
    rows = meld.rows("test", labelled=False)
    dialogue = max((d for d in meld.dialogues if meld.split[d[0]] == "test"), key=len)
    cut = len(dialogue) // 2
    later = torch.as_tensor(np.array(dialogue[cut:]))
    outputs = {}
    for causal in (True, False):
        model = fit(meld, "context", {"encoder": encoder, "causal": causal},
                    TrainConfig(epochs=2, patience=5, device="cpu")).model
        before = predict_rows(model, meld, rows)
        saved = meld.xs[0][later].clone()
        meld.xs[0][later] = torch.randn_like(saved) * 3
        try:
            after = predict_rows(model, meld, rows)
        finally:
            meld.xs[0][later] = saved
        pos = np.searchsorted(rows, dialogue[:cut])
        outputs[causal] = torch.allclose(before[pos], after[pos], atol=1e-5)
        other = ~np.isin(rows, dialogue)
        assert torch.equal(before[other], after[other])  # other dialogues are untouched
    assert outputs[True] is True
    assert outputs[False] is False


def test_drop_modalities_keeps_one_present_and_never_invents() -> None:
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(5000, 3, generator=gen) < 0.7
    dropped = drop_modalities(mask, 0.5, gen)
    assert not (dropped & ~mask).any()
    assert (dropped.any(1) == mask.any(1)).all()
    rate = 1 - dropped.sum().item() / mask.sum().item()
    assert 0.3 < rate < 0.5  # about p, a little less since one modality always stays
    assert torch.equal(drop_modalities(mask, 0.0, gen), mask)
