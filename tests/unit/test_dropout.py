"""Threshold dropout masks: nn.Dropout's distribution with p in steps of 2**-15, kept values scaled by
the inverse of the kept share in the input's dtype, every bit lane of the draws in use, reproducible from
the seed, gradients through the kept values only; a fit swaps every dropout of the encoder and head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from erc_stream.errors import ConfigError
from erc_stream.model import ProjectionHead, default_encoder_path
from trainer.config import TrainConfig
from trainer.dropout import DROPOUT_MASKS, ThresholdDropout, resolve_dropout_masks, use_dropout_masks

N = 4_000_000  # values per mask: the kept share's sd is sqrt(0.09 / N) = 0.00015 at p = 0.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_keeps_1_minus_p_and_scales_by_the_kept_share(dtype):
    torch.manual_seed(0)
    x = torch.ones(N, dtype=dtype)
    y = ThresholdDropout(0.1).train()(x)
    kept = y != 0
    keep_share = 1 - 3277 / 32768  # p = 0.1 rounded to 3277 of 2**15 levels: 0.899994
    assert abs(kept.float().mean().item() - keep_share) < 0.00075  # 5 sd
    assert y.dtype == dtype
    scale = torch.tensor(1 / keep_share).to(dtype)  # in bf16 1.109375, as PyTorch's own bf16 dropout scales
    assert torch.equal(y[kept].unique(), scale.reshape(1))
    for lane in range(4):  # each of the four values read off one 64-bit draw keeps its share
        assert abs(kept[lane::4].float().mean().item() - keep_share) < 0.0015  # 5 sd of N / 4 values


def test_p_is_rounded_to_steps_of_2_to_the_minus_15():
    torch.manual_seed(0)
    x = torch.ones(N)
    assert abs((ThresholdDropout(0.5).train()(x) != 0).float().mean().item() - 0.5) < 0.00125
    assert ThresholdDropout(1e-6).train()(x) is x  # under half a step: no level dropped


def test_same_seed_same_mask_and_gradient_only_through_kept_values():
    drop = ThresholdDropout(0.3).train()
    torch.manual_seed(7)
    a = drop(torch.ones(1000))
    x = torch.randn(1000, requires_grad=True)
    torch.manual_seed(7)
    b = drop(x)
    b.sum().backward()
    assert torch.equal(a != 0, b != 0)
    assert x.grad is not None
    assert torch.equal(x.grad, a)  # the kept values' scale, zero where dropped


def test_eval_zero_and_one():
    x = torch.randn(50)
    assert ThresholdDropout(0.5).eval()(x) is x
    assert ThresholdDropout(0.0).train()(x) is x
    assert torch.equal(ThresholdDropout(1.0).train()(x), torch.zeros(50))


def test_auto_draws_threshold_masks_on_a_cpu_only():
    assert resolve_dropout_masks("auto", torch.device("cpu")) == "threshold"
    assert resolve_dropout_masks("auto", torch.device("cuda")) == "bernoulli"  # PyTorch's fused kernel there
    assert resolve_dropout_masks("bernoulli", torch.device("cpu")) == "bernoulli"
    with pytest.raises(ValueError, match="unknown 'coin'"):
        resolve_dropout_masks("coin", torch.device("cpu"))


def test_swaps_every_dropout_of_a_real_encoder_and_back():
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(default_encoder_path(), local_files_only=True)
    model = nn.ModuleDict({"encoder": encoder, "head": ProjectionHead(384, 32, dropout=0.2)})
    before = [(n, m.p) for n, m in model.named_modules() if isinstance(m, nn.Dropout)]
    assert len(before) == 1 + 6 * 3 + 1  # embeddings, per layer: attention (its p), attention output, output; head
    assert use_dropout_masks(model, "threshold") == len(before)
    after = [(n, m.p) for n, m in model.named_modules() if isinstance(m, ThresholdDropout)]
    assert after == before  # same places, same p
    assert use_dropout_masks(model, "threshold") == 0
    model.train()
    # What a training forward draws: the embeddings' and each layer's two output dropouts now take
    # threshold masks (one random_ each); the attention probabilities' dropout runs inside PyTorch's
    # fused attention (sdpa), which reads the module's p and draws its own Bernoulli mask per layer.
    assert _draws(encoder) == {"aten::random_": 1 + 6 * 2, "aten::bernoulli_": 6}
    assert use_dropout_masks(model, "bernoulli") == len(before)
    assert not any(isinstance(m, ThresholdDropout) for m in model.modules())
    assert _draws(encoder) == {"aten::bernoulli_": 1 + 6 * 3}


def _draws(encoder) -> dict[str, int]:
    """The random-draw operators one training forward of ``encoder`` calls, with their counts."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        encoder(input_ids=torch.tensor([[101, 2054, 103, 102]]))
    return {e.key: e.count for e in prof.key_averages() if e.key in ("aten::random_", "aten::bernoulli_")}


def test_the_config_refuses_an_unknown_draw():
    assert TrainConfig().dropout_masks == "auto" and "auto" in DROPOUT_MASKS
    with pytest.raises(ConfigError, match="TrainConfig.dropout_masks has an invalid value: 'coin'; valid values"):
        TrainConfig(dropout_masks="coin")
