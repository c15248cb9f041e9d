"""Threshold dropout masks: nn.Dropout's distribution with p in steps of 2**-15, kept values scaled by
the inverse of the kept share in the input's dtype, every bit lane of the draws in use, reproducible from
the seed, gradients through the kept values only; a fit swaps every dropout of the encoder and head, and
an encoder with fused attention trains with train_attention: transformers' eager arithmetic with its own
dropout module in training, the fused attention in evaluation, back to fused with bernoulli masks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from erc_stream.errors import ConfigError
from erc_stream.model import ProjectionHead, default_encoder_path
from trainer.config import TrainConfig
from trainer.dropout import (
    DROPOUT_MASKS,
    TRAIN_ATTENTION,
    ThresholdDropout,
    resolve_dropout_masks,
    train_attention,
    use_dropout_masks,
)

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
    assert encoder.config._attn_implementation == "sdpa"
    model.train()
    # PyTorch's fused attention (sdpa) reads only p off the attention-probability dropout module and
    # draws that mask itself: threshold masks would miss it, so with them the attention is train_attention.
    assert _draws(encoder) == {"aten::bernoulli_": 1 + 6 * 3}
    assert use_dropout_masks(model, "threshold") == len(before)
    after = [(n, m.p) for n, m in model.named_modules() if isinstance(m, ThresholdDropout)]
    assert after == before  # same places, same p
    assert encoder.config._attn_implementation == TRAIN_ATTENTION
    assert use_dropout_masks(model, "threshold") == 0
    # What a training forward draws: the embeddings' dropout and each layer's three (attention
    # probabilities, attention output, output) take threshold masks, one random_ each.
    assert _draws(encoder) == {"aten::random_": 1 + 6 * 3}
    assert use_dropout_masks(model, "bernoulli") == len(before)
    assert not any(isinstance(m, ThresholdDropout) for m in model.modules())
    assert encoder.config._attn_implementation == "sdpa"
    assert _draws(encoder) == {"aten::bernoulli_": 1 + 6 * 3}


def _draws(encoder) -> dict[str, int]:
    """The random-draw operators one training forward of ``encoder`` calls, with their counts."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        encoder(input_ids=torch.tensor([[101, 2054, 103, 102]]))
    return {e.key: e.count for e in prof.key_averages() if e.key in ("aten::random_", "aten::bernoulli_")}


def _no_dropout(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


@pytest.mark.parametrize("bf16", [False, True])
def test_train_attention_is_eager_arithmetic_in_training_and_the_fused_attention_in_evaluation(bf16):
    from transformers import AutoModel

    def load(impl: str) -> nn.Module:
        return _no_dropout(
            AutoModel.from_pretrained(default_encoder_path(), local_files_only=True, attn_implementation=impl)
        )

    model, eager, fused = load("sdpa"), load("eager"), load("sdpa")
    use_dropout_masks(model, "threshold")
    torch.manual_seed(0)
    ids = torch.randint(1000, 30000, (4, 24))
    pad = torch.ones_like(ids)
    pad[2:, 16:] = 0  # two rows padded
    additive = (1.0 - pad[:, None, None, :].float()) * torch.finfo(torch.float32).min  # a caller's own 4D mask
    for mask in (pad, None, additive):  # None: the fused attention's masks skip a batch without padding
        for training, reference in ((True, eager), (False, fused)):
            outs = []
            for m in (model, reference):
                m.train(training)
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    outs.append(m(input_ids=ids, attention_mask=mask).last_hidden_state)
            assert torch.equal(*outs), (training, None if mask is None else mask.dim())
    # the two references differ (by rounding), so each equality above tells which one the model ran
    assert not torch.equal(
        fused.train()(input_ids=ids).last_hidden_state, eager.train()(input_ids=ids).last_hidden_state
    )


def test_train_attention_calls_the_modules_dropout_or_else_the_rate_it_is_given():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    probs = (q @ k.transpose(2, 3) * 0.5).softmax(dim=-1)  # scaling 1/sqrt(4)
    own = nn.Module()
    own.dropout = ThresholdDropout(0.5)
    bare = nn.Module()  # no dropout module: the rate transformers passes in goes to PyTorch's dropout
    own.is_causal = bare.is_causal = False  # as an encoder's self-attention says (the fused attention reads it)
    for module in (own, bare):
        torch.manual_seed(1)
        out, got = train_attention(module.train(), q, k, v, None, dropout=0.5)
        torch.manual_seed(1)
        want = own.dropout(probs) if module is own else nn.functional.dropout(probs, p=0.5)
        assert torch.allclose(got, want) and torch.allclose(out, (want @ v).transpose(1, 2))
        assert (got == 0).any() and not torch.equal(got, probs)  # something was dropped
    out, got = train_attention(bare.eval(), q, k, v, None, dropout=0.5)  # evaluation: the fused attention
    assert got is None and torch.allclose(out, (probs @ v).transpose(1, 2), atol=1e-6)


def test_an_encoder_without_fused_attention_keeps_its_own():
    from transformers import AutoModel, MPNetConfig

    config = MPNetConfig(
        vocab_size=3000, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    encoder = AutoModel.from_config(config)  # MPNet (mpnet-base) calls its attention dropout module itself
    assert encoder.config._attn_implementation == "eager"
    assert use_dropout_masks(encoder, "threshold") == 1 + 2 * 3
    assert encoder.config._attn_implementation == "eager"
    assert _draws(encoder.train()) == {"aten::random_": 1 + 2 * 3}


def test_the_config_refuses_an_unknown_draw():
    assert TrainConfig().dropout_masks == "auto" and "auto" in DROPOUT_MASKS
    with pytest.raises(ConfigError, match="TrainConfig.dropout_masks has an invalid value: 'coin'; valid values"):
        TrainConfig(dropout_masks="coin")
