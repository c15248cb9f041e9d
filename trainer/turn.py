"""Training data of the turn-once architecture: whole conversations, each turn encoded once per step.

A step takes a few whole conversations (at most ``batch_size`` turns together, a longer
conversation alone), encodes every turn once as its single-turn prompt, builds every turn's
window from those vectors (``erc_stream.context.conversation_windows``) and returns the
projected h_t of every turn, so the losses see each turn once and no turn is encoded twice::

    prompts of the batch's turns   (N_b, T)  one padded encoder pass
    z                              (N_b, H)
    windows                        (N_b, k + 1, H)
    reps = MLP(context(windows))   (N_b, D)  -> SupCon + angle + CE (+ triplet)

Samplers (per epoch, over conversations):

* ``shuffle``: every conversation once, in random order;
* ``balanced`` (SentEmoContext's class-balanced sampler, lifted to conversations, which must
  stay whole for their windows): as many draws with replacement as there are conversations,
  each conversation weighted by the mean inverse frequency ``N / (C n_c)`` of its turns' labels,
  so conversations with rare emotions come more often.

Dev evaluation and stage 2 go through ``erc_stream.model.TurnPredictor`` (``predict_turn_data``,
``turn_representations``): the inference path the worker and ``erc-train evaluate`` use.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from erc_stream.context import Windows, conversation_windows
from erc_stream.model import Predictions, TurnEmotionModel, TurnPredictor
from erc_stream.prompt import Prompt, PromptBuilder, pad_batch
from trainer.datasets import Conversation, inverse_frequency

__all__ = [
    "SAMPLERS",
    "TurnData",
    "TurnSplits",
    "TurnStage1Net",
    "conversation_weights",
    "predict_turn_data",
    "turn_representations",
]

SAMPLERS = ("shuffle", "balanced")


@dataclass(frozen=True)
class TurnData:
    """One split as the turn trainer reads it: a single-turn prompt per utterance, conversations in order.

    Attributes:
        prompts: N prompts (``PromptBuilder.build_turn``), conversation after conversation.
        labels: N class ids.
        speakers: N speaker names.
        lengths: turns per conversation.
        firsts: index of each conversation's first turn.
        pad_id: the tokenizer's padding id.
    """

    prompts: list[Prompt]
    labels: list[int]
    speakers: list[str]
    lengths: list[int]
    firsts: list[int]
    pad_id: int

    @classmethod
    def build(cls, builder: PromptBuilder, conversations: Sequence[Conversation], label_id: dict[str, int]) -> TurnData:
        prompts: list[Prompt] = []
        for conv in conversations:
            turns = builder.encode_turns([u.speaker for u in conv.utterances], [u.text for u in conv.utterances])
            prompts.extend(builder.build_turn(t) for t in turns)
        lengths = [len(c.utterances) for c in conversations]
        return cls(
            prompts=prompts,
            labels=[label_id[u.label] for c in conversations for u in c.utterances],
            speakers=[u.speaker for c in conversations for u in c.utterances],
            lengths=lengths,
            firsts=list(itertools.accumulate(lengths, initial=0))[:-1],
            pad_id=builder.tokenizer.pad_token_id or 0,
        )

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def examples(self) -> list[tuple[Prompt, int]]:
        """(prompt, label) per utterance, the shape the window trainer's examples have."""
        return list(zip(self.prompts, self.labels, strict=True))

    def turns_of(self, conversations: Sequence[int]) -> list[int]:
        """Utterance indices of these conversations, each in spoken order."""
        return [i for c in conversations for i in range(self.firsts[c], self.firsts[c] + self.lengths[c])]

    def batches(self, max_turns: int, rng: random.Random, sampler: str = "shuffle") -> list[list[int]]:
        """This epoch's batches of conversation indices: at most ``max_turns`` turns each (a longer
        conversation alone), never the same conversation twice in a batch."""
        n = len(self.lengths)
        if sampler == "shuffle":
            order = list(range(n))
            rng.shuffle(order)
        elif sampler == "balanced":
            weights = conversation_weights(self.labels, self.lengths, max(self.labels, default=0) + 1)
            order = rng.choices(range(n), weights=weights.tolist(), k=n)
        else:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        batches: list[list[int]] = []
        current: list[int] = []
        turns = 0
        for c in order:
            if current and (turns + self.lengths[c] > max_turns or c in current):
                batches.append(current)
                current, turns = [], 0
            current.append(c)
            turns += self.lengths[c]
        if current:
            batches.append(current)
        return batches

    def steps_per_epoch(self, max_turns: int, sampler: str = "shuffle") -> int:
        """Batches in an epoch, for the learning-rate schedule. Packing depends on the order, so
        this is one epoch's count with a fixed seed: other epochs differ by a few batches (a
        longer epoch ends at learning rate 0, the schedule's floor)."""
        return len(self.batches(max_turns, random.Random(0), sampler))

    def represent(
        self, model: TurnEmotionModel, conversations: Sequence[int], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training forward pass of whole conversations: (reps (N_b, D), labels (N_b,)), every turn encoded once."""
        turns = self.turns_of(conversations)
        batch = {k: v.to(device) for k, v in pad_batch([self.prompts[i] for i in turns], self.pad_id).items()}
        z = model.encode(**batch)  # (N_b, H)
        windows = conversation_windows(
            z,
            [self.lengths[c] for c in conversations],
            [self.speakers[i] for i in turns],
            model.context.settings.context_turns,
        )  # (N_b, k + 1, H)
        reps = model.represent(windows)  # (N_b, D)
        return reps, torch.tensor([self.labels[i] for i in turns], device=device)


@dataclass(frozen=True)
class TurnSplits:
    """The train and dev splits of a turn run."""

    train: TurnData
    dev: TurnData


class TurnStage1Net(nn.Module):
    """The turn model's stage-1 forward in one module (like train.py's window one): the h_t
    representations of whole conversations, their labels, and the anchors from their texts."""

    def __init__(self, model: TurnEmotionModel, anchor_enc: nn.Module, data: TurnData) -> None:
        super().__init__()
        self.model = model
        self.anchor_enc = anchor_enc
        self.data = data

    def forward(self, conversations: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        reps, labels = self.data.represent(self.model, conversations, self.model.anchors.device)
        return reps, labels, self.anchor_enc()  # (N_b, D), (N_b,), (C, D)


def conversation_weights(labels: Sequence[int], lengths: Sequence[int], n_classes: int) -> np.ndarray:
    """Sampling weight of each conversation: the mean inverse class frequency ``N / (C n_c)`` of its turns."""
    y = np.asarray(labels, dtype=np.int64)
    per_turn = np.asarray(inverse_frequency(labels, n_classes), dtype=np.float64)[y]  # (N,)
    firsts = np.cumsum([0, *lengths])[:-1]
    sums = np.add.reduceat(per_turn, firsts) if len(y) else np.zeros(0)
    return sums / np.maximum(np.asarray(lengths, dtype=np.float64), 1)  # (n_conversations,)


def turn_representations(predictor: TurnPredictor, data: TurnData, batch_size: int) -> torch.Tensor:
    """Projected h_t of every turn, (N, D) float32 on the predictor's device; no autograd (stage 2)."""
    vectors = predictor.encode(data.prompts, batch_size=batch_size)  # (N, H)
    windows = conversation_windows(vectors, data.lengths, data.speakers, predictor.builder.context_turns)
    out = []
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            part = windows.select(slice(start, start + batch_size))
            on_device = Windows(*(t.to(predictor.device) for t in (part.vectors, part.valid, part.same_speaker)))
            out.append(predictor.model.represent(on_device).float())  # (b, D)
    return torch.cat(out)  # (N, D)


def predict_turn_data(predictor: TurnPredictor, data: TurnData, batch_size: int) -> Predictions:
    """Predictions for every turn of a split, in order: each turn encoded once, one context pass each."""
    vectors = predictor.encode(data.prompts, batch_size=batch_size)  # (N, H)
    windows = conversation_windows(vectors, data.lengths, data.speakers, predictor.builder.context_turns)
    n, c = len(windows), len(predictor.labels)
    scores = np.zeros((n, c), dtype=np.float32)
    conf = np.zeros((n, c), dtype=np.float32)
    seconds = 0.0
    for start in range(0, n, batch_size):
        p = predictor.predict_windows(windows.select(slice(start, start + batch_size)))
        scores[start : start + len(p)] = p.scores
        conf[start : start + len(p)] = p.confidence
        seconds += p.seconds
    return Predictions(scores=scores, confidence=conf, label_ids=scores.argmax(axis=1), seconds=seconds)
