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
one pass, so ``auto`` keeps it there. An encoder whose attention runs in PyTorch's fused attention
(``sdpa``: the BERT family, MiniLM among them) reads only ``p`` off its attention-probability dropout
module and draws that mask itself, with Bernoulli draws; mpnet-base's eager attention calls the
module, so every dropout of it draws threshold masks.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DROPOUT_MASKS", "ThresholdDropout", "resolve_dropout_masks", "use_dropout_masks"]

# auto: threshold on a CPU, PyTorch's own elsewhere; bernoulli: PyTorch's own (every run before session 36)
DROPOUT_MASKS = ("auto", "threshold", "bernoulli")
_THRESHOLD_DEVICES = frozenset({"cpu"})
_BITS = 15  # random bits per mask value
_LEVELS = 1 << _BITS


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


def use_dropout_masks(module: nn.Module, masks: str) -> int:
    """Make every ``nn.Dropout`` under ``module`` draw ``masks`` (``threshold`` or ``bernoulli``), in
    place, keeping each one's ``p``. Returns how many were replaced."""
    cls = {"threshold": ThresholdDropout, "bernoulli": nn.Dropout}[masks]
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Dropout) and type(child) is not cls:
                setattr(parent, name, cls(child.p))
                replaced += 1
    return replaced
