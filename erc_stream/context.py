"""The context model of the turn-once architecture: a small transformer over cached turn vectors.

Each turn is encoded once, alone, into a vector z (the encoder's hidden state at the mask
token of its short turn prompt). The emotion of turn t is then read from its window::

    window of t    [z_t, z_{t-1}, ..., z_{t-w}]     w = min(k, turns before t), row d = distance d
    x_d            z_{t-d} + distance_emb[d] + speaker_emb[s_{t-d} == s_t]
    x              L pre-norm transformer layers over the valid rows (full attention inside the window)
    h_t            z_t + out(norm(x_0))              out starts at zero, so an untrained model gives h_t = z_t

Causal by construction: a window holds turn t and turns before it, never later ones, and
h_t is read at row 0 only. The same window gives the same h_t wherever the conversation
started (positions are distances from t, not absolute indices), which is what lets the
worker rebuild a window from cached vectors and get the offline evaluator's answer.

Two ways to build a batch of windows, one layout (rows ordered by distance, padding after):

* ``conversation_windows``: every turn of several conversations, from one (N, H) tensor of
  their vectors, each turn's vector gathered into the windows that show it (training and
  offline evaluation: each turn is encoded once per step);
* ``pack_windows``: windows the caller already holds, oldest first (the streaming worker).

Pure torch; no tokenizer, no I/O.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from erc_stream.errors import ConfigError
from erc_stream.prompt import normalize_text

__all__ = [
    "ContextModel",
    "ContextSettings",
    "Windows",
    "conversation_windows",
    "pack_windows",
    "same_speaker_flags",
]


@dataclass(frozen=True, slots=True)
class ContextSettings:
    """Shape of a context model; stored in the manifest so a worker rebuilds it exactly.

    Attributes:
        hidden_size: width of the turn vectors (the encoder width).
        context_turns: k, the most turns before t a window holds (distances 0..k).
        layers: transformer layers (0 gives ``h_t = z_t + out(norm(z_t + embeddings))``).
        heads: attention heads; must divide ``hidden_size``.
        ffn_dim: width of each layer's feed-forward block.
        dropout: dropout inside the layers, training only.
    """

    hidden_size: int
    context_turns: int
    layers: int = 2
    heads: int = 0  # 0: one head per 64 dimensions
    ffn_dim: int = 0  # 0: 4 * hidden_size
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.heads == 0:
            object.__setattr__(self, "heads", max(1, self.hidden_size // 64))
        if self.ffn_dim == 0:
            object.__setattr__(self, "ffn_dim", 4 * self.hidden_size)
        checks = [
            ("hidden_size", self.hidden_size >= 1),
            ("context_turns", self.context_turns >= 0),
            ("layers", self.layers >= 0),
            ("heads", self.heads >= 1 and self.hidden_size % self.heads == 0),
            ("ffn_dim", self.ffn_dim >= 1),
            ("dropout", 0.0 <= self.dropout < 1.0),
        ]
        for name, ok in checks:
            value = getattr(self, name)
            if isinstance(value, bool) or not ok:
                hint = f" (it must divide hidden_size={self.hidden_size})" if name == "heads" else ""
                raise ConfigError(f"context model setting {name} has an invalid value: {value!r}{hint}")

    @property
    def window_size(self) -> int:
        """Rows of a full window: turn t and its k predecessors."""
        return self.context_turns + 1

    def to_manifest(self) -> dict[str, int | float]:
        return {
            "hidden_size": self.hidden_size,
            "context_turns": self.context_turns,
            "layers": self.layers,
            "heads": self.heads,
            "ffn_dim": self.ffn_dim,
            "dropout": self.dropout,
        }

    @classmethod
    def from_manifest(cls, data: dict) -> ContextSettings:
        keys = ("hidden_size", "context_turns", "layers", "heads", "ffn_dim", "dropout")
        missing = [k for k in keys if k not in data]
        if missing:
            raise ConfigError(f"the manifest's context_model lacks {', '.join(missing)}; republish this version")
        return cls(**{k: data[k] for k in keys})


@dataclass(frozen=True, slots=True)
class Windows:
    """A batch of windows, row d of window i holding turn t_i - d.

    Attributes:
        vectors: (B, W, H) turn vectors; padding rows are zero.
        valid: (B, W) True where a row holds a turn.
        same_speaker: (B, W) True where that turn's speaker is the speaker of turn t (row 0).
    """

    vectors: Tensor
    valid: Tensor
    same_speaker: Tensor

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def select(self, rows: slice | Tensor) -> Windows:
        """Some of the windows (a slice or an index tensor), same width."""
        return Windows(vectors=self.vectors[rows], valid=self.valid[rows], same_speaker=self.same_speaker[rows])


class ContextModel(nn.Module):
    """Reads a window of turn vectors and returns h_t, the context-aware vector of its turn t."""

    def __init__(self, settings: ContextSettings) -> None:
        super().__init__()
        self.settings = settings
        h = settings.hidden_size
        self.distance = nn.Embedding(settings.window_size, h)
        self.speaker = nn.Embedding(2, h)  # 0: another speaker, 1: the speaker of turn t
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=h,
                nhead=settings.heads,
                dim_feedforward=settings.ffn_dim,
                dropout=settings.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(settings.layers)
        )
        self.norm = nn.LayerNorm(h)
        self.out = nn.Linear(h, h)
        nn.init.normal_(self.distance.weight, std=0.02)
        nn.init.normal_(self.speaker.weight, std=0.02)
        # Zero output: training starts from h_t = z_t, the turn's own vector.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, windows: Windows) -> Tensor:
        """(B, W, H) windows -> (B, H) h_t."""
        z, valid, same = windows.vectors, windows.valid, windows.same_speaker
        if z.dim() != 3 or z.shape[2] != self.settings.hidden_size:
            raise ValueError(f"windows must be (B, W, {self.settings.hidden_size}), got {tuple(z.shape)}")
        width = z.shape[1]
        if not 1 <= width <= self.settings.window_size:
            raise ValueError(f"windows have {width} rows; this model reads 1..{self.settings.window_size}")
        z = z.to(self.out.weight.dtype)
        # Padding rows are zeroed: their keys are masked, but NaN/inf values would still leak
        # through the 0 * value products of the attention.
        z = torch.where(valid.unsqueeze(-1), z, torch.zeros((), dtype=z.dtype, device=z.device))  # (B, W, H)
        dist = torch.arange(width, device=z.device)  # (W,)
        x = z + self.distance(dist).unsqueeze(0) + self.speaker(same.long())  # (B, W, H)
        padding = ~valid  # (B, W) True = ignore, as nn.MultiheadAttention expects
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=padding)  # (B, W, H)
        return z[:, 0] + self.out(self.norm(x[:, 0]))  # (B, H)


def same_speaker_flags(speakers: Sequence[str]) -> list[bool]:
    """For a window oldest first (current turn last): does each turn share the current speaker?

    Speakers compare by ``normalize_text``, the form the prompt shows.
    """
    if not speakers:
        return []
    keys = [normalize_text(s) for s in speakers]
    return [k == keys[-1] for k in keys]


def conversation_windows(
    vectors: Tensor, lengths: Sequence[int], speakers: Sequence[str], context_turns: int
) -> Windows:
    """The window of every turn of consecutive conversations.

    Args:
        vectors: (N, H) one vector per turn, conversations one after another, each in spoken order.
        lengths: turns per conversation; they sum to N.
        speakers: N speaker names, aligned with ``vectors``.
        context_turns: k; window i holds turns i, i-1, ..., i-k of its own conversation.

    Returns:
        N windows with W = k + 1 rows (fewer turns at a conversation's start: padding rows).
    """
    n = vectors.shape[0]
    if sum(lengths) != n or len(speakers) != n or any(x < 0 for x in lengths):
        raise ValueError(f"lengths sum to {sum(lengths)} and {len(speakers)} speakers for {n} vectors")
    if context_turns < 0:
        raise ValueError(f"context_turns must be >= 0, got {context_turns}")
    device = vectors.device
    firsts = list(itertools.accumulate(lengths, initial=0))[:-1]  # index of each conversation's first turn
    starts = torch.repeat_interleave(
        torch.tensor(firsts, dtype=torch.long), torch.tensor(list(lengths), dtype=torch.long)
    ).to(device)  # (N,) first turn of each turn's conversation
    turn = torch.arange(n, device=device)  # (N,)
    dist = torch.arange(context_turns + 1, device=device)  # (W,)
    index = turn[:, None] - dist[None, :]  # (N, W) turn shown in row d of window i
    valid = index >= starts[:, None]  # (N, W)
    index = torch.where(valid, index, turn[:, None])  # padding rows point at a real turn, then are masked
    # Speaker ids, numbered per conversation (windows never cross one): equal ids <=> equal names.
    spk: list[int] = []
    for first, length in zip(firsts, lengths, strict=True):
        names: dict[str, int] = {}
        spk.extend(names.setdefault(normalize_text(s), len(names)) for s in speakers[first : first + length])
    spk_t = torch.tensor(spk, dtype=torch.long, device=device)  # (N,)
    same = (spk_t[index] == spk_t[:, None]) & valid  # (N, W)
    gathered = vectors[index]  # (N, W, H)
    gathered = torch.where(valid.unsqueeze(-1), gathered, torch.zeros((), dtype=vectors.dtype, device=device))
    return Windows(vectors=gathered, valid=valid, same_speaker=same)


def pack_windows(windows: Sequence[Tensor], same_speaker: Sequence[Sequence[bool]]) -> Windows:
    """Pad windows the caller holds into one batch.

    Args:
        windows: per window a (w_i, H) tensor of turn vectors, oldest first, turn t last.
        same_speaker: per window w_i flags (``same_speaker_flags`` of its speakers), oldest first.

    Returns:
        Windows with W = max w_i rows, row 0 = turn t.
    """
    if not windows:
        raise ValueError("pack_windows needs at least one window")
    width = max(w.shape[0] for w in windows)
    hidden = windows[0].shape[1]
    ref = windows[0]
    vectors = torch.zeros((len(windows), width, hidden), dtype=ref.dtype, device=ref.device)  # (B, W, H)
    valid = torch.zeros((len(windows), width), dtype=torch.bool, device=ref.device)  # (B, W)
    same = torch.zeros((len(windows), width), dtype=torch.bool, device=ref.device)  # (B, W)
    for i, (w, flags) in enumerate(zip(windows, same_speaker, strict=True)):
        rows = w.shape[0]
        if rows == 0 or len(flags) != rows or w.dim() != 2 or w.shape[1] != hidden:
            raise ValueError(f"window {i}: {tuple(w.shape)} vectors with {len(flags)} speaker flags")
        vectors[i, :rows] = w.flip(0)  # oldest-first (w, H) -> distance order
        valid[i, :rows] = True
        same[i, :rows] = torch.tensor(list(flags)[::-1], dtype=torch.bool)
    return Windows(vectors=vectors, valid=valid, same_speaker=same)
