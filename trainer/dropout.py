"""How training draws its dropout masks.

PyTorch's dropout on a CPU draws each mask with ``bernoulli_``: in a stage-1 step of mpnet-base in
bf16 those draws took 11.6% of the step (docs/benchmarks/README.md, finding 11). ``ThresholdDropout``
reads each mask value off 15 random bits instead: an int64 ``random_()`` gives 63 random bits (its
top bit is always 0), four 16-bit lanes of 15 bits each, so four values take one 64-bit draw where a
float draw takes one a value. Values at or above p's share of the 2**15 levels are kept: on this
project's CPU about half the time of ``bernoulli_`` forward and backward (finding 12). The
distribution is nn.Dropout's with p rounded to a multiple of 2**-15 (0.1 drops 3277 of 32768
levels: keeps 0.899994), kept values scaled by the inverse of the kept share in the input's dtype;
other masks than PyTorch's from the same seed. On a GPU PyTorch's fused dropout kernel is already
one pass, so ``auto`` keeps it there.

Attention probabilities: mpnet-base's eager attention calls its dropout module, so it draws threshold
masks. An encoder whose attention runs in PyTorch's fused attention (``sdpa``: the BERT family,
MiniLM among them) reads only ``p`` off that module and draws the mask itself, with Bernoulli draws;
on a CPU that kernel cannot drop attention weights, so in training it runs its unfused fallback
anyway, which under bf16 autocast was slower than the eager product (finding 13 in
docs/benchmarks/README.md). With threshold masks such an encoder's attention is
``train_attention``: in training the eager product (scores, softmax, the module's own dropout,
values), as transformers' eager attention computes it; otherwise, in evaluation, ``sdpa`` as
before. ``bernoulli`` puts ``sdpa`` back.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "DROPOUT_MASKS",
    "TRAIN_ATTENTION",
    "ThresholdDropout",
    "resolve_dropout_masks",
    "train_attention",
    "use_dropout_masks",
]

# auto: threshold on a CPU, PyTorch's own elsewhere; bernoulli: PyTorch's own (every run before session 36)
DROPOUT_MASKS = ("auto", "threshold", "bernoulli")
_THRESHOLD_DEVICES = frozenset({"cpu"})
_BITS = 15  # random bits per mask value
_LEVELS = 1 << _BITS
TRAIN_ATTENTION = "erc_train"  # the name train_attention is registered under with transformers
_FUSED_ATTENTION = "sdpa"


class ThresholdDropout(nn.Dropout):
    """``nn.Dropout`` whose keep mask is 15 random bits per value compared with p's share of 2**15."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dropped_levels = round(self.p * _LEVELS)
        if not self.training or dropped_levels == 0:
            return x
        if dropped_levels == _LEVELS:
            return x * 0.0
        n = x.numel()
        draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()  # 63 random bits each
        levels = draws.view(torch.int16)[:n].view(x.shape) & (_LEVELS - 1)  # (*x.shape), uniform on 0..2**15-1
        keep = levels >= dropped_levels
        return x * keep.to(x.dtype).mul_(_LEVELS / (_LEVELS - dropped_levels))


def resolve_dropout_masks(setting: str, device: torch.device) -> str:
    """What ``setting`` (one of ``DROPOUT_MASKS``) draws on ``device``: ``threshold`` or ``bernoulli``."""
    if setting == "auto":
        return "threshold" if device.type in _THRESHOLD_DEVICES else "bernoulli"
    if setting not in DROPOUT_MASKS:
        raise ValueError(f"dropout masks: unknown {setting!r}; use one of {', '.join(DROPOUT_MASKS)}")
    return setting


def train_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention of a transformers self-attention ``module`` (query, key, value: (B, heads, T, d)) that
    calls the module's own ``dropout`` in training, where PyTorch's fused attention draws Bernoulli
    masks; in evaluation the fused attention itself. ``attention_mask`` is what the fused attention
    takes: (B, 1, T, T) booleans, True where a token may look, an additive float mask, or None for no
    padding."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not module.training:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    scores = torch.matmul(query, key.transpose(2, 3)) * (query.size(-1) ** -0.5 if scaling is None else scaling)
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        # additive and in float32, as transformers' eager mask is: the softmax then runs in float32
        attention_mask = torch.zeros(attention_mask.shape, device=scores.device).masked_fill_(
            attention_mask.logical_not(), torch.finfo(torch.float32).min
        )
    if attention_mask is not None:  # a caller's own additive 4D mask is added as given
        scores = scores + attention_mask
    probs = scores.softmax(dim=-1)
    drop = getattr(module, "dropout", None)
    probs = drop(probs) if isinstance(drop, nn.Dropout) else nn.functional.dropout(probs, p=dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def _register_train_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(TRAIN_ATTENTION, train_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(TRAIN_ATTENTION, sdpa_mask)  # the fused attention's masks


def _use_attention(module: nn.Module, masks: str) -> None:
    """Each transformers model under ``module`` whose attention is fused (``sdpa``) and can be switched
    takes ``train_attention`` for threshold masks; one that has it goes back to ``sdpa`` for bernoulli.
    A transformers release without switchable attention keeps the fused attention (and its Bernoulli
    draws); the manifest's ``training.attention`` says which ran."""
    from transformers import PreTrainedModel

    have, want = (_FUSED_ATTENTION, TRAIN_ATTENTION) if masks == "threshold" else (TRAIN_ATTENTION, _FUSED_ATTENTION)
    for model in module.modules():
        if not isinstance(model, PreTrainedModel) or getattr(model.config, "_attn_implementation", None) != have:
            continue
        can_switch = getattr(model, "_can_set_attn_implementation", None)
        if can_switch is None or not can_switch():
            continue
        if want == TRAIN_ATTENTION:
            _register_train_attention()
        model.set_attn_implementation(want)


def use_dropout_masks(module: nn.Module, masks: str) -> int:
    """Make every ``nn.Dropout`` under ``module`` draw ``masks`` (``threshold`` or ``bernoulli``), in
    place, keeping each one's ``p``, and its transformers models' fused attention too (see the module's
    text). Returns how many dropout modules were replaced."""
    cls = {"threshold": ThresholdDropout, "bernoulli": nn.Dropout}[masks]
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Dropout) and type(child) is not cls:
                setattr(parent, name, cls(child.p))
                replaced += 1
    _use_attention(module, masks)
    return replaced
