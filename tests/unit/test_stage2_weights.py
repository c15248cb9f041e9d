"""Stage 2 (anchor adaptation) under `--class-weighting`: the weights reach its cross-entropy.

`_adapt_anchors` runs for real on representations it reads from its kept file (the path a resumed
run takes), so no encoder is needed: 2-D representations of an imbalanced split, 90 utterances of
a frequent emotion and 10 of a rare one whose clusters overlap, and start anchors that are swapped,
so that every anchor epoch improves dev and stage 2 keeps a trained pair.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from erc_stream.prompt import Prompt
from trainer.checkpoint import STAGE2_REPS_FILE, save_atomic
from trainer.config import TrainConfig
from trainer.losses import cosine_logits
from trainer.train import _adapt_anchors, _reps_fingerprint

LABELS = ["neutral", "rare"]


def _split(n_frequent: int, n_rare: int, seed: int) -> tuple[list[tuple[Prompt, int]], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    angles = torch.cat([torch.randn(n_frequent, generator=g) * 25, 40 + torch.randn(n_rare, generator=g) * 25])
    rad = angles * math.pi / 180
    reps = torch.stack([rad.cos(), rad.sin()], dim=1)  # (N, 2)
    examples = [(Prompt((i, 7, i + 1), 1, 0), 0 if i < n_frequent else 1) for i in range(n_frequent + n_rare)]
    return examples, reps


TRAIN = _split(90, 10, seed=0)
DEV = _split(90, 10, seed=1)


def _stage2(tmp_path, class_weighting: str) -> tuple[torch.Tensor, dict]:
    cfg = TrainConfig(store=tmp_path / "s", run_dir=tmp_path / "r", class_weighting=class_weighting,
                      stage2_epochs=30, stage2_lr=0.05)  # fmt: skip
    model = nn.Linear(2, 2)  # stands in for the frozen encoder's weights in the representations' fingerprint
    (train_ex, train_r), (dev_ex, dev_r) = TRAIN, DEV
    run_dir = tmp_path / class_weighting
    run_dir.mkdir()
    fingerprint = _reps_fingerprint(model, train_ex, dev_ex)
    save_atomic({"fingerprint": fingerprint, "train": train_r, "dev": dev_r}, run_dir / STAGE2_REPS_FILE)
    swapped = torch.tensor([[math.cos(0.7), math.sin(0.7)], [1.0, 0.0]])  # (C, D): each anchor on the other's cluster
    return _adapt_anchors(cfg, model, None, train_ex, dev_ex, swapped, LABELS, "neutral", False, run_dir=run_dir)


def test_class_weights_reach_stage_2(tmp_path):
    plain, plain_info = _stage2(tmp_path, "none")
    weighted, weighted_info = _stage2(tmp_path, "inverse")
    assert plain_info["best_epoch"] > 0 and weighted_info["best_epoch"] > 0
    assert "class_weighting" not in plain_info
    assert weighted_info["class_weighting"] == "inverse"
    # Rare class up: with the weights, more training utterances are nearer the rare anchor.
    _, train_r = TRAIN

    def rare_calls(anchors: torch.Tensor) -> int:
        return int(cosine_logits(train_r, anchors, 0.1).argmax(1).sum())

    assert rare_calls(weighted) > rare_calls(plain)
