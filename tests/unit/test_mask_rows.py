"""The last layer's feed-forward on the mask rows only (erc_stream.model.mask_hidden): the same
mask-token vectors and gradients as every token through every layer, for each encoder type it
applies to, on padded batches; other types and mask_rows_only=False run every token."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from erc_stream.errors import ArtifactError
from erc_stream.model import MASK_ROW_MODEL_TYPES, last_attention, mask_hidden

# Padded batch: lengths 7, 4, 6 (pad id 1 keeps clear of the tokens), mask at a different place in each.
IDS = torch.tensor([[0, 5, 6, 7, 8, 9, 2], [0, 10, 11, 2, 1, 1, 1], [0, 12, 13, 14, 15, 2, 1]])
MASK = (IDS != 1).long()
MASK_INDEX = torch.tensor([3, 2, 4])


def tiny_encoder(model_type: str) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    if model_type == "distilbert":  # its own names for the same sizes
        sizes = {"dim": 16, "n_layers": 3, "n_heads": 2, "hidden_dim": 32}
    else:
        sizes = {"hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 32}
    config = AutoConfig.for_model(model_type, vocab_size=32, max_position_embeddings=40, pad_token_id=1, **sizes)
    return AutoModel.from_config(config).eval()


def every_token(encoder: nn.Module) -> torch.Tensor:
    hidden = encoder(input_ids=IDS, attention_mask=MASK).last_hidden_state  # (B, T, H)
    return hidden[torch.arange(3), MASK_INDEX]  # (B, H)


def feed_forward_rows(encoder: nn.Module) -> list[int]:
    """Rows the last layer's feed-forward ran on in each call since this was set up."""
    seen: list[int] = []
    encoder.encoder.layer[-1].intermediate.register_forward_hook(
        lambda _m, args, _out: seen.append(args[0].shape[0] * args[0].shape[1])
    )
    return seen


@pytest.mark.parametrize("model_type", sorted(MASK_ROW_MODEL_TYPES))
def test_mask_rows_equal_every_token_and_skip_the_rest(model_type):
    encoder = tiny_encoder(model_type)
    seen = feed_forward_rows(encoder)
    with torch.no_grad():
        expected = every_token(encoder)
        got = mask_hidden(encoder, MASK_INDEX, input_ids=IDS, attention_mask=MASK)
    assert seen == [3 * 7, 3]  # every token, then the three mask rows
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # The hook lived for that call only: the encoder called directly sees every token again.
    with torch.no_grad():
        assert encoder(input_ids=IDS, attention_mask=MASK).last_hidden_state.shape == (3, 7, 16)


def test_mask_rows_give_the_gradients_of_every_token():
    encoder = tiny_encoder("bert")  # eval: no dropout, so both ways compute the same function
    # Not a sum of squares: after the last LayerNorm that is nearly constant, so its gradients are noise.
    weights = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    grads = []
    for rows_only in (False, True):
        encoder.zero_grad()
        (
            mask_hidden(encoder, MASK_INDEX, input_ids=IDS, attention_mask=MASK, mask_rows_only=rows_only) * weights
        ).sum().backward()
        grads.append({n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None})
    full, rows = grads
    assert full.keys() == rows.keys()
    assert any(".layer.2.intermediate." in n for n in rows)  # the last feed-forward is trained too
    for name in full:
        torch.testing.assert_close(rows[name], full[name], atol=1e-5, rtol=1e-4, msg=name)


def test_mask_rows_only_false_runs_every_token():
    encoder = tiny_encoder("bert")
    seen = feed_forward_rows(encoder)
    with torch.no_grad():
        mask_hidden(encoder, MASK_INDEX, input_ids=IDS, attention_mask=MASK, mask_rows_only=False)
    assert seen == [3 * 7]


def test_other_encoder_types_run_every_token():
    encoder = tiny_encoder("distilbert")
    assert last_attention(encoder) is None
    with torch.no_grad():
        expected = every_token(encoder)
        got = mask_hidden(encoder, MASK_INDEX, input_ids=IDS, attention_mask=MASK)
    torch.testing.assert_close(got, expected)


def test_an_attention_block_that_does_not_give_a_vector_per_token_is_refused_and_unhooked():
    encoder = tiny_encoder("bert")
    attention = encoder.encoder.layer[-1].attention
    # A (hypothetical) attention block that pools its tokens: mask rows cannot be picked from it.
    attention.register_forward_hook(lambda _m, _a, out: (out[0][:, :1], *out[1:]))
    with torch.no_grad(), pytest.raises(ArtifactError, match=r"gave \(3, 1, 16\) for input \(3, 7\)"):
        mask_hidden(encoder, MASK_INDEX, input_ids=IDS, attention_mask=MASK)
    assert len(attention._forward_hooks) == 1  # only the test's own hook is left
