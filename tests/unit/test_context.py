"""The turn-once context model: window layout with exact indices, causality, padding,
distance positions, the same-speaker flag, and the residual that starts training at z_t."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from erc_stream.context import (
    ContextModel,
    ContextSettings,
    Windows,
    conversation_windows,
    pack_windows,
    same_speaker_flags,
)
from erc_stream.errors import ConfigError

H = 16


def trained_like(layers: int = 2, context_turns: int = 3, seed: int = 0) -> ContextModel:
    """A context model whose every weight is random, the zero-initialised output included."""
    torch.manual_seed(seed)
    model = ContextModel(ContextSettings(hidden_size=H, context_turns=context_turns, layers=layers, heads=2))
    nn.init.normal_(model.out.weight, std=0.3)
    nn.init.normal_(model.out.bias, std=0.3)
    nn.init.normal_(model.speaker.weight, std=1.0)
    nn.init.normal_(model.distance.weight, std=1.0)
    return model.eval()


def vectors(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, H, generator=torch.Generator().manual_seed(seed))  # (N, H)


# ------------------------------------------------------------------------ settings


def test_settings_defaults_follow_the_encoder_width():
    s = ContextSettings(hidden_size=384, context_turns=5)
    assert (s.layers, s.heads, s.ffn_dim, s.dropout, s.window_size) == (2, 6, 1536, 0.1, 6)
    assert ContextSettings.from_manifest(s.to_manifest()) == s


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"heads": 5}, "heads"),  # does not divide 16
        ({"layers": -1}, "layers"),
        ({"context_turns": -1}, "context_turns"),
        ({"dropout": 1.0}, "dropout"),
        ({"layers": True}, "layers"),
    ],
)
def test_bad_settings_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=f"setting {field} has an invalid value"):
        ContextSettings(**{"hidden_size": H, "context_turns": 2, **changes})


def test_from_manifest_names_missing_keys():
    with pytest.raises(ConfigError, match="lacks ffn_dim, dropout"):
        ContextSettings.from_manifest({"hidden_size": H, "context_turns": 2, "layers": 1, "heads": 2})


# ------------------------------------------------------------------------ window layout


def test_conversation_windows_exact_layout():
    # Two conversations: turns 0..2 (speakers A B A) and 3..4 (speakers B B); k = 2.
    z = torch.arange(5, dtype=torch.float32).unsqueeze(1)  # (5, 1): turn i has vector [i]
    w = conversation_windows(z, [3, 2], ["A", "B", "a ", "B", "B"], context_turns=2)
    assert w.vectors.squeeze(-1).tolist() == [
        [0, 0, 0],  # turn 0: itself only
        [1, 0, 0],  # turn 1: itself, turn 0
        [2, 1, 0],  # turn 2: itself, 1, 0
        [3, 0, 0],  # turn 3 starts conversation 2: nothing from conversation 1
        [4, 3, 0],
    ]
    assert w.valid.tolist() == [
        [True, False, False],
        [True, True, False],
        [True, True, True],
        [True, False, False],
        [True, True, False],
    ]
    # "a " is "A" only in case and spacing: normalize_text keeps case, so it is another speaker.
    assert w.same_speaker.tolist() == [
        [True, False, False],
        [True, False, False],
        [True, False, False],
        [True, False, False],
        [True, True, False],
    ]


def test_same_speaker_flags_compare_normalised_names():
    assert same_speaker_flags(["Ross", "Rachel", "Ross\u00a0", " Ross"]) == [True, False, True, True]
    assert same_speaker_flags([]) == []


def test_pack_windows_equals_conversation_windows():
    z = vectors(7)
    speakers = ["A", "B", "A", "C", "A", "B", "B"]
    lengths = [4, 3]
    k = 2
    ref = conversation_windows(z, lengths, speakers, context_turns=k)
    held, flags = [], []
    start = 0
    for length in lengths:
        for t in range(start, start + length):
            first = max(start, t - k)
            held.append(z[first : t + 1])  # oldest first
            flags.append(same_speaker_flags(speakers[first : t + 1]))
        start += length
    packed = pack_windows(held, flags)
    assert torch.equal(packed.vectors, ref.vectors)
    assert torch.equal(packed.valid, ref.valid)
    assert torch.equal(packed.same_speaker, ref.same_speaker)


def test_conversation_windows_checks_lengths():
    with pytest.raises(ValueError, match="lengths sum to 4"):
        conversation_windows(vectors(5), [2, 2], ["A"] * 5, context_turns=1)


# ------------------------------------------------------------------------ the model


@pytest.mark.parametrize("layers", [0, 1, 2])
def test_untrained_model_returns_the_turn_vector(layers):
    # The output projection starts at zero: h_t = z_t exactly, whatever the context.
    model = ContextModel(ContextSettings(hidden_size=H, context_turns=3, layers=layers, heads=2)).eval()
    z = vectors(6)
    with torch.no_grad():
        h = model(conversation_windows(z, [6], list("ABABAB"), context_turns=3))
    assert torch.equal(h, z)


def test_zeroed_output_gives_the_turn_vector_of_a_trained_model():
    model = trained_like()
    z = vectors(5)
    w = conversation_windows(z, [5], list("ABCAB"), context_turns=3)
    with torch.no_grad():
        assert not torch.allclose(model(w), z)
        model.out.weight.zero_()
        model.out.bias.zero_()
        assert torch.equal(model(w), z)


def test_future_turns_do_not_change_the_past():
    model = trained_like()
    z = vectors(8)
    speakers = list("ABABCABA")
    later = z.clone()
    later[5:] = torch.randn(3, H) * 10  # turns 5..7 change
    changed_speakers = speakers[:5] + ["Z", "Z", "Z"]
    with torch.no_grad():
        before = model(conversation_windows(z, [8], speakers, context_turns=3))
        after = model(conversation_windows(later, [8], changed_speakers, context_turns=3))
    assert torch.equal(before[:5], after[:5])
    assert not torch.allclose(before[5:], after[5:])


def test_padding_rows_are_ignored_even_when_they_hold_garbage():
    model = trained_like()
    z = vectors(4)
    clean = conversation_windows(z, [4], list("ABAB"), context_turns=3)
    dirty_vectors = clean.vectors.clone()
    dirty_vectors[~clean.valid] = float("nan")
    dirty_same = clean.same_speaker | ~clean.valid
    dirty = Windows(vectors=dirty_vectors, valid=clean.valid, same_speaker=dirty_same)
    with torch.no_grad():
        assert torch.equal(model(clean), model(dirty))


def test_positions_are_distances_not_conversation_indices():
    # The window [a, b, c] read at c gives the same h whether the conversation started at a or
    # two turns earlier (k = 2 hides those two turns).
    model = trained_like(context_turns=2)
    z = vectors(5)
    with torch.no_grad():
        short = model(conversation_windows(z[2:], [3], ["A", "B", "A"], context_turns=2))
        long = model(conversation_windows(z, [5], ["B", "A", "A", "B", "A"], context_turns=2))
    torch.testing.assert_close(short[2], long[4])


def test_order_and_speaker_flags_change_the_output():
    model = trained_like(context_turns=2)
    z = vectors(3)
    with torch.no_grad():
        base = model(conversation_windows(z, [3], ["A", "B", "A"], context_turns=2))[2]
        swapped = model(conversation_windows(z[[1, 0, 2]], [3], ["B", "A", "A"], context_turns=2))[2]
        other_speaker = model(conversation_windows(z, [3], ["C", "B", "A"], context_turns=2))[2]
        renamed = model(conversation_windows(z, [3], ["X", "Y", "X"], context_turns=2))[2]
    assert not torch.allclose(base, swapped)
    assert not torch.allclose(base, other_speaker)
    assert torch.equal(base, renamed)  # only "same speaker as t" matters, not the names


def test_windows_wider_than_the_model_are_refused():
    model = trained_like(context_turns=1)
    w = conversation_windows(vectors(3), [3], list("ABC"), context_turns=2)
    with pytest.raises(ValueError, match="this model reads 1..2"):
        model(w)


def test_gradients_reach_every_parameter_after_one_step():
    # out starts at zero, so the first step only moves out; from the second on everything learns.
    torch.manual_seed(0)
    model = ContextModel(ContextSettings(hidden_size=H, context_turns=2, layers=1, heads=2, dropout=0.0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = conversation_windows(vectors(4), [4], list("ABAB"), context_turns=2)
    for _ in range(2):
        opt.zero_grad()
        model(w).pow(2).sum().backward()
        opt.step()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
