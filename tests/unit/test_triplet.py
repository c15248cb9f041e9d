"""Exact values of the triplet loss (cosine distance, batch-hard and semi-hard mining) on 2-D
unit vectors whose distances are known by hand: d = 1 - cos(angle difference)."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses import triplet_loss

S = math.sqrt(2) / 2  # cos 45


def unit(deg: float) -> list[float]:
    rad = math.radians(deg)
    return [math.cos(rad), math.sin(rad)]


# r0 = (1, 0), r1 = (0, 1) with label 0; r2 = (s, s), r3 = (-0.6, -0.8) with label 1.
# Distances: d01 = 1, d02 = d12 = 1 - s, d03 = 1.6, d13 = 1.8, d23 = 1 + 1.4 s.
REPS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [S, S], [-0.6, -0.8]])
LABELS = torch.tensor([0, 0, 1, 1])


def test_batch_hard_by_hand():
    # item 0: hardest positive d01 = 1, hardest negative d02 = 1 - s -> s + 0.5
    # item 1: the same with d12 -> s + 0.5
    # item 2: positive d23 = 1 + 1.4 s, negative 1 - s -> 2.4 s + 0.5
    # item 3: positive 1 + 1.4 s, negative min(1.6, 1.8) -> 1.4 s - 0.1
    expected = (5.8 * S + 1.4) / 4
    assert triplet_loss(REPS, LABELS, margin=0.5).item() == pytest.approx(expected, abs=1e-6)


def test_semi_hard_by_hand():
    # (0, 1): d_ap = 1, the closest negative beyond it is r3 at 1.6 -> relu(1 - 1.6 + 0.5) = 0
    # (1, 0): d_ap = 1, beyond it r3 at 1.8 -> 0
    # (2, 3): d_ap = 1 + 1.4 s; both negatives are closer -> the farthest, 1 - s -> 2.4 s + 0.5
    # (3, 2): d_ap = 1 + 1.4 s; both closer -> the farthest, 1.8 -> 1.4 s - 0.3
    expected = (3.8 * S + 0.2) / 4
    assert triplet_loss(REPS, LABELS, margin=0.5, mining="semi_hard").item() == pytest.approx(expected, abs=1e-6)


def test_semi_hard_takes_the_closest_negative_beyond_the_positive():
    # Anchor at 0 deg, positive at 90 deg (d = 1); negatives at d = 1.2 and 1.4 on either side,
    # each of its own class, so only the pairs (0, 1) and (1, 0) count.
    a12 = math.degrees(math.acos(-0.2))  # d = 1.2 from r0
    a14 = math.degrees(math.acos(-0.4))  # d = 1.4 from r0
    reps = torch.tensor([unit(0), unit(90), unit(-a12), unit(a14)])
    labels = torch.tensor([0, 0, 1, 2])
    # (0, 1): negatives beyond d = 1 are 1.2 and 1.4 -> 1.2 -> relu(1 - 1.2 + 0.5) = 0.3
    # (1, 0): from r1, r2 lies 90 + a12 away, r3 lies a14 - 90 away
    d12 = 1 - math.cos(math.radians(90 + a12))
    d13 = 1 - math.cos(math.radians(a14 - 90))
    beyond = [d for d in (d12, d13) if d > 1]
    chosen = min(beyond) if beyond else max(d12, d13)
    expected = (0.3 + max(0.0, 1 - chosen + 0.5)) / 2
    assert triplet_loss(reps, labels, margin=0.5, mining="semi_hard").item() == pytest.approx(expected, abs=1e-6)
    # batch-hard on the same batch: items 0 and 1 only (2 and 3 have no positive)
    hard0 = 1 - 1.2 + 0.5
    hard1 = 1 - min(d12, d13) + 0.5
    assert triplet_loss(reps, labels, margin=0.5).item() == pytest.approx((hard0 + hard1) / 2, abs=1e-6)


def test_scale_does_not_matter_and_well_separated_classes_give_zero():
    reps = torch.tensor([unit(0), unit(10), unit(180), unit(170)])
    labels = torch.tensor([0, 0, 1, 1])
    for mining in ("batch_hard", "semi_hard"):
        assert triplet_loss(reps, labels, margin=0.5, mining=mining).item() == 0.0
        scaled = triplet_loss(REPS * 7.0, LABELS, margin=0.5, mining=mining)
        assert scaled.item() == pytest.approx(triplet_loss(REPS, LABELS, margin=0.5, mining=mining).item(), abs=1e-6)


def test_no_valid_triplet_gives_zero_with_a_graph():
    reps = torch.tensor([unit(0), unit(50)], requires_grad=True)
    for labels in (torch.tensor([0, 1]), torch.tensor([3, 3])):  # no positive / no negative
        loss = triplet_loss(reps, labels, margin=0.2)
        assert loss.item() == 0.0
        loss.backward()


def test_gradient_pulls_the_positive_in_and_pushes_the_negative_out():
    reps = REPS.clone().requires_grad_(True)
    triplet_loss(reps, LABELS, margin=0.5).backward()
    step = REPS - 0.1 * reps.grad
    assert triplet_loss(step, LABELS, margin=0.5).item() < triplet_loss(REPS, LABELS, margin=0.5).item()


def test_bad_arguments():
    with pytest.raises(ValueError, match="mining must be one of batch_hard, semi_hard"):
        triplet_loss(REPS, LABELS, margin=0.5, mining="hardest")
    with pytest.raises(ValueError, match="margin must be a finite number > 0"):
        triplet_loss(REPS, LABELS, margin=0.0)
    with pytest.raises(ValueError, match=r"labels must be a \(B,\) = \(4,\)"):
        triplet_loss(REPS, LABELS[:3], margin=0.5)
