"""Turn-once training data: conversations kept whole, batches with each turn once, the
class-balanced conversation sampler's weights by hand, and a training forward pass that
encodes each turn once and equals the inference path."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from erc_stream.model import TurnPredictor, load_predictor
from tests.fixtures_model import MELD_LABELS, publish_test_turn_model
from trainer.datasets import Conversation, Utterance
from trainer.turn import TurnData, conversation_weights, predict_turn_data, turn_representations

LABEL_ID = {label: i for i, label in enumerate(MELD_LABELS)}


def conv(cid: str, *turns: tuple[str, str, str]) -> Conversation:
    return Conversation(id=cid, utterances=tuple(Utterance(s, t, label) for s, t, label in turns))


CONVS = [
    conv("a", ("Ross", "Hi.", "neutral"), ("Rachel", "Oh no!", "fear"), ("Ross", "What?", "surprise")),
    conv("b", ("Joey", "Pizza!", "joy")),
    conv("c", ("Monica", "Clean this up.", "anger"), ("Chandler", "Fine.", "neutral")),
    conv("d", ("Phoebe", "I am sad.", "sadness"), ("Joey", "Why?", "neutral"), ("Phoebe", "Ugh.", "disgust")),
]


@pytest.fixture(scope="module")
def turn(tmp_path_factory) -> TurnPredictor:
    store: Path = tmp_path_factory.mktemp("store")
    publish_test_turn_model(store, version="t1", context_turns=2)
    p = load_predictor(store / "t1", device="cpu", dtype="fp32")
    assert isinstance(p, TurnPredictor)
    return p


@pytest.fixture(scope="module")
def data(turn) -> TurnData:
    return TurnData.build(turn.builder, CONVS, LABEL_ID)


def test_turn_data_layout(turn, data):
    assert len(data) == 9
    assert data.lengths == [3, 1, 2, 3]
    assert data.firsts == [0, 3, 4, 6]
    assert data.labels == [LABEL_ID[u.label] for c in CONVS for u in c.utterances]
    assert data.speakers[:3] == ["Ross", "Rachel", "Ross"]
    b = turn.builder
    assert data.prompts[1] == b.build_turn(b.encode_turn("Rachel", "Oh no!"))
    assert data.turns_of([3, 1]) == [6, 7, 8, 3]
    assert data.examples[4] == (data.prompts[4], LABEL_ID["anger"])


def test_shuffle_batches_hold_every_conversation_once_within_the_turn_budget(data):
    batches = data.batches(4, random.Random(7))
    assert sorted(c for b in batches for c in b) == [0, 1, 2, 3]
    for b in batches:
        assert len(b) == 1 or sum(data.lengths[c] for c in b) <= 4
    assert batches == data.batches(4, random.Random(7))  # seeded
    assert all(len(b) == 1 for b in data.batches(1, random.Random(7)))  # longer conversations go alone


def test_conversation_weights_by_hand():
    # labels 0, 0 | 1 with 2 classes: n = (2, 1), N = 3 -> per class 3/4 and 3/2.
    np.testing.assert_allclose(conversation_weights([0, 0, 1], [2, 1], 2), [0.75, 1.5])
    # one conversation mixing both: mean of 3/4 and 3/2
    np.testing.assert_allclose(conversation_weights([0, 1, 0, 0], [2, 2], 2), [(1 / 1.5 + 2) / 2, 4 / 6])


def test_balanced_batches_favour_rare_labels_and_never_repeat_a_conversation_in_a_batch():
    # Conversation 0: two neutral turns; conversation 1: one fear turn. Weights 0.75 : 1.5.
    d = TurnData(prompts=[], labels=[0, 0, 1], speakers=["A", "B", "A"], lengths=[2, 1], firsts=[0, 2], pad_id=0)
    rng = random.Random(3)
    picks = [c for _ in range(3000) for b in d.batches(8, rng, "balanced") for c in b]
    assert picks.count(1) / len(picks) == pytest.approx(2 / 3, abs=0.02)
    for _ in range(50):
        for b in d.batches(8, rng, "balanced"):
            assert len(b) == len(set(b))
    with pytest.raises(ValueError, match="sampler must be one of shuffle, balanced"):
        d.batches(8, rng, "oversample")


def test_training_forward_encodes_each_turn_once_and_equals_inference(turn, data, monkeypatch):
    model = turn.model
    calls: list[int] = []
    encode = model.encode

    def counting(input_ids, attention_mask, mask_index):
        calls.append(input_ids.shape[0])
        return encode(input_ids, attention_mask, mask_index)

    monkeypatch.setattr(model, "encode", counting)
    with torch.no_grad():
        reps, y = data.represent(model, [2, 0], torch.device("cpu"))
    assert calls == [5]  # one encoder pass over the 2 + 3 turns
    assert y.tolist() == [data.labels[i] for i in (4, 5, 0, 1, 2)]
    monkeypatch.undo()
    every = turn_representations(turn, data, batch_size=4)  # (9, D)
    torch.testing.assert_close(reps, every[[4, 5, 0, 1, 2]], atol=2e-5, rtol=0)
    scores = predict_turn_data(turn, data, batch_size=4).scores
    expected = torch.nn.functional.normalize(every, dim=-1) @ torch.nn.functional.normalize(model.anchors, dim=-1).T
    np.testing.assert_allclose(scores, expected.detach().numpy(), atol=1e-5, rtol=0)
