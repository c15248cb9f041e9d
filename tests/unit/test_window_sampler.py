"""The window trainer's epoch batches: every prompt once (shuffle), or drawn by inverse class
frequency (balanced), length-sorted either way; and the inverse frequencies by hand."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from trainer.config import TrainConfig
from trainer.datasets import inverse_frequency
from trainer.train import _length_sorted_batches, _window_batches


def test_inverse_frequency_by_hand():
    # 3 x class 0, 1 x class 1, class 2 absent: N / (C n_c) = 4/9, 4/3, and 4/3 for the unseen class
    assert inverse_frequency([0, 0, 1, 0], 3) == pytest.approx([4 / 9, 4 / 3, 4 / 3])
    assert inverse_frequency([0, 1], 2) == pytest.approx([1.0, 1.0])  # balanced split: all 1


def test_shuffle_batches_are_the_length_sorted_batches_of_before():
    lengths = [random.Random(1).randint(5, 90) for _ in range(500)]
    labels = [i % 3 for i in range(500)]
    got = _window_batches(lengths, labels, 3, 16, random.Random(42), "shuffle")
    assert got == _length_sorted_batches(lengths, 16, random.Random(42))  # a run keeps its batches
    assert sorted(i for b in got for i in b) == list(range(500))


def test_balanced_batches_draw_every_class_about_equally_and_stay_length_sorted():
    # 90% class 0, 8% class 1, 2% class 2 (MELD's neutral / sadness / fear, roughly)
    labels = [0] * 900 + [1] * 80 + [2] * 20
    rng = random.Random(5)
    lengths = [rng.randint(5, 90) for _ in labels]
    counts: Counter[int] = Counter()
    for seed in range(20):
        batches = _window_batches(lengths, labels, 3, 16, random.Random(seed), "balanced")
        drawn = [i for b in batches for i in b]
        assert len(drawn) == len(labels)  # as many draws as prompts: the epoch keeps its length
        assert all(len(b) <= 16 for b in batches) and len(batches) == 63
        counts.update(labels[i] for i in drawn)
    total = sum(counts.values())
    for c in range(3):
        assert counts[c] / total == pytest.approx(1 / 3, abs=0.03)
    # inside a chunk of 50 batches the draws were sorted by length: each batch spans a narrow range
    spans = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert sorted(spans)[len(spans) // 2] <= 10
    a = _window_batches(lengths, labels, 3, 16, random.Random(9), "balanced")
    assert a == _window_batches(lengths, labels, 3, 16, random.Random(9), "balanced")  # seeded


def test_window_runs_accept_the_balanced_sampler():
    assert TrainConfig(dataset="meld", architecture="window", sampler="balanced").sampler == "balanced"
