"""How training draws its dropout masks.

PyTorch's dropout on a CPU draws each mask with ``bernoulli_``: in a stage-1 step of mpnet-base in
bf16 those draws took 11.6% of the step (docs/benchmarks/README.md, finding 11), about twice what
drawing float32 uniforms and keeping those at or above ``p`` takes. ``ThresholdDropout`` does the
latter: the same distribution (each value kept with probability 1 - p, kept values scaled by
1 / (1 - p) in the input's dtype, as ``nn.Dropout`` scales them), other masks from the same seed.
On a GPU PyTorch's fused dropout kernel is already one pass, so ``auto`` keeps it there.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DROPOUT_MASKS", "ThresholdDropout", "resolve_dropout_masks", "use_dropout_masks"]

# auto: threshold on a CPU, PyTorch's own elsewhere; bernoulli: PyTorch's own (every run before session 36)
DROPOUT_MASKS = ("auto", "threshold", "bernoulli")
_THRESHOLD_DEVICES = frozenset({"cpu"})


class ThresholdDropout(nn.Dropout):
    """``nn.Dropout`` whose keep mask is float32 uniform draws >= p (kept values scaled by 1 / (1 - p))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return x * 0.0
        # float32 draws: uniforms drawn in bf16 take few distinct values and keep too few (0.8985 for p=0.1)
        keep = torch.rand(x.shape, dtype=torch.float32, device=x.device) >= self.p
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


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
