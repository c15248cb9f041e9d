"""--freeze-layers: the encoder split after N layers gives the whole encoder's output, the frozen
part is fixed and shared, the cache holds exactly the frozen part's output and is read back only
when it was made from the same weights and prompts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from erc_stream.errors import ConfigError
from erc_stream.model import default_encoder_path
from erc_stream.prompt import Prompt, PromptBuilder
from trainer.config import TrainConfig
from trainer.frozen import CACHE_FILE, FrozenPrefix, pad_hidden

TURNS = [
    ("Ross", "We were on a break!"),
    ("Rachel", "Oh my God, I can't believe you said that."),
    ("Ross", "What?"),
    ("Monica", "Could you two please stop shouting? The neighbours can hear everything."),
    ("Chandler", "Okay."),
]


def fresh_minilm():
    """A private copy of the packaged encoder (the split changes requires_grad on it)."""
    from transformers import AutoModel, AutoTokenizer

    path = default_encoder_path()
    return AutoTokenizer.from_pretrained(path, local_files_only=True), AutoModel.from_pretrained(
        path, local_files_only=True
    ).eval()


def prompts_for(tokenizer, context_turns: int = 2) -> list[Prompt]:
    builder = PromptBuilder(tokenizer, context_turns=context_turns, max_length=128)
    turns = builder.encode_turns([s for s, _ in TURNS], [t for _, t in TURNS])
    return [builder.build(turns[max(0, i - context_turns) : i], turns[i]) for i in range(len(turns))]


@pytest.fixture(scope="module")
def minilm():
    return fresh_minilm()


def whole(encoder: nn.Module, prompts: list[Prompt], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    from erc_stream.prompt import pad_batch

    batch = pad_batch(prompts, pad_id)
    with torch.no_grad():
        out = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return out, batch["attention_mask"]


@pytest.mark.parametrize("n_frozen", [1, 3, 5])
def test_top_of_bottom_equals_the_whole_minilm(n_frozen):
    tokenizer, encoder = fresh_minilm()
    prompts = prompts_for(tokenizer)
    prefix = FrozenPrefix.split(encoder, n_frozen, prompts[:2], tokenizer.pad_token_id)
    expected, mask = whole(encoder, prompts, tokenizer.pad_token_id)
    hidden = prefix.cache(prompts, batch_size=2, cache_dir=None, progress=False)
    padded, mask2 = pad_hidden(hidden)
    assert torch.equal(mask, mask2)
    with torch.no_grad():
        got = prefix.top(padded, mask2)  # (B, T, H)
    keep = mask.bool()
    assert (got - expected).abs()[keep].max().item() < 1e-5
    # What training reads: the mask rows, the last layer's feed-forward run on them alone.
    mask_index = torch.tensor([p.mask_index for p in prompts])
    rows: list[int] = []
    encoder.encoder.layer[-1].intermediate.register_forward_hook(lambda _m, a, _o: rows.append(a[0].shape[:2].numel()))
    with torch.no_grad():
        h_mask = prefix.top_mask(padded, mask2, mask_index)  # (B, H)
    assert rows == [len(prompts)]
    torch.testing.assert_close(h_mask, expected[torch.arange(len(prompts)), mask_index], atol=1e-5, rtol=1e-5)


def test_frozen_parameters_are_the_lower_ones_and_the_upper_ones_are_the_encoders_own():
    tokenizer, encoder = fresh_minilm()
    FrozenPrefix.split(encoder, 4, prompts_for(tokenizer)[:2], tokenizer.pad_token_id)
    frozen = sorted(n for n, p in encoder.named_parameters() if not p.requires_grad)
    trainable = sorted(n for n, p in encoder.named_parameters() if p.requires_grad)
    assert all(n.startswith(("embeddings.", *(f"encoder.layer.{i}." for i in range(4)))) for n in frozen)
    assert {n.split(".")[2] for n in trainable if n.startswith("encoder.layer.")} == {"4", "5"}
    assert any(n.startswith("embeddings.") for n in frozen)


def test_training_the_upper_part_trains_the_encoder_and_leaves_the_lower_part():
    tokenizer, encoder = fresh_minilm()
    prompts = prompts_for(tokenizer)
    prefix = FrozenPrefix.split(encoder, 4, prompts[:2], tokenizer.pad_token_id)
    before = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    hidden, mask = pad_hidden(prefix.cache(prompts, batch_size=8, cache_dir=None, progress=False))
    opt = torch.optim.SGD([p for p in encoder.parameters() if p.requires_grad], lr=0.1)
    prefix.top(hidden, mask)[:, 0].sum().backward()
    opt.step()
    changed = {n for n, p in encoder.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(("encoder.layer.4.", "encoder.layer.5.")) for n in changed)


def test_mpnet_family_splits_with_its_shared_relative_position_bias():
    from transformers import MPNetConfig, MPNetModel

    torch.manual_seed(0)
    config = MPNetConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64
    )
    encoder = MPNetModel(config).eval()
    ids = [(0, 5, 6, 7, 2), (0, 9, 10, 11, 12, 13, 14, 2), (0, 3, 2)]
    prompts = [Prompt(input_ids=t, mask_index=1, context_used=0) for t in ids]
    prefix = FrozenPrefix.split(encoder, 2, prompts, config.pad_token_id)
    assert prefix.upper.encoder.relative_attention_bias is encoder.encoder.relative_attention_bias
    expected, mask = whole(encoder, prompts, config.pad_token_id)
    padded, _ = pad_hidden(prefix.cache(prompts, batch_size=3, cache_dir=None, progress=False))
    with torch.no_grad():
        got = prefix.top(padded, mask)
        h_mask = prefix.top_mask(padded, mask, torch.tensor([1, 4, 2]))  # (B, H)
    assert (got - expected).abs()[mask.bool()].max().item() < 1e-5
    torch.testing.assert_close(h_mask, expected[torch.arange(3), torch.tensor([1, 4, 2])], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_frozen", [0, 6, 7, -1])
def test_a_split_outside_the_encoder_is_refused_with_its_layer_count(minilm, n_frozen):
    tokenizer, encoder = minilm
    with pytest.raises(ConfigError, match="this encoder has 6 layers, so it must be between 1 and 5"):
        FrozenPrefix.split(encoder, n_frozen, prompts_for(tokenizer)[:1], tokenizer.pad_token_id)


def test_an_encoder_without_a_layer_list_is_refused():
    with pytest.raises(ConfigError, match="train it without --freeze-layers"):
        FrozenPrefix.split(nn.Linear(2, 2), 1, [], 0)


def test_the_cache_is_read_back_only_for_the_same_weights_and_prompts(tmp_path, monkeypatch):
    tokenizer, encoder = fresh_minilm()
    prompts = prompts_for(tokenizer)
    prefix = FrozenPrefix.split(encoder, 3, prompts[:2], tokenizer.pad_token_id)
    first = prefix.cache(prompts, batch_size=2, cache_dir=tmp_path, progress=False)
    assert (tmp_path / CACHE_FILE).is_file()
    assert [h.shape[0] for h in first] == [len(p) for p in prompts]

    calls = []
    real_bottom = prefix.bottom
    monkeypatch.setattr(prefix, "bottom", lambda ids, mask: calls.append(1) or real_bottom(ids, mask))
    again = prefix.cache(prompts, batch_size=2, cache_dir=tmp_path, progress=False)
    assert not calls, "the same weights and prompts must be read from the file"
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))

    other = prompts_for(tokenizer, context_turns=0)
    redone = prefix.cache(other, batch_size=2, cache_dir=tmp_path, progress=False)
    assert calls, "other prompts must be computed again"
    assert [h.shape[0] for h in redone] == [len(p) for p in other]


def test_pad_hidden_right_pads_with_zeros_and_masks_the_padding():
    a = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    b = torch.ones(1, 3)
    hidden, mask = pad_hidden([a, b])
    assert hidden.shape == (2, 2, 3)
    assert torch.equal(hidden[0], a)
    assert torch.equal(hidden[1], torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    assert mask.tolist() == [[1, 1], [1, 0]]


def test_config_refuses_freezing_for_the_turn_model_and_negative_counts():
    with pytest.raises(ConfigError, match="use it with architecture='window'"):
        TrainConfig(architecture="turn", freeze_layers=2)
    with pytest.raises(ConfigError, match="TrainConfig.freeze_layers has an invalid value: -1"):
        TrainConfig(freeze_layers=-1)
    assert TrainConfig(freeze_layers=3).freeze_layers == 3
