"""8-bit storage of encoder weights: one scale per row, symmetric, dequantized once at load.

A 110M encoder is 440 MB in fp32 and 220 MB in fp16, too much to replace in a git-tracked
model store; in 8 bits it is about 110 MB. Only storage is 8-bit: at load every weight is
turned back into fp32 (then cast once to the serving dtype, as for any version), so the
forward pass and its kernels are the same as for a 16- or 32-bit version. Whether the
rounding costs quality is measured per version by ``erc-train repack`` on dev.

Each 2-D floating-point tensor with at least ``MIN_NUMEL`` values (linear weights and
embedding tables) becomes int8 values ``q`` and an fp32 scale per row ``s`` with
``w ≈ q * s`` and ``s = max|w_row| / 127``; the rest (biases, LayerNorm) stays fp32.
"""

from __future__ import annotations

import torch

from erc_stream.errors import ArtifactError

__all__ = ["FORMAT", "MIN_NUMEL", "SCALE_SUFFIX", "dequantize_state", "quantize_state"]

FORMAT = "int8-rowwise-absmax"  # written into the safetensors metadata and checked at load
SCALE_SUFFIX = ".int8_row_scale"
MIN_NUMEL = 4096  # smaller matrices are not worth a scale per row
_QMAX = 127


def quantize_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An encoder state dict in 8-bit storage form (tensors ready for safetensors.save_file)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.endswith(SCALE_SUFFIX):
            raise ArtifactError(f"encoder tensor {name!r} ends with {SCALE_SUFFIX!r}, which 8-bit storage reserves")
        w = tensor.detach().cpu()
        if w.is_floating_point() and w.ndim == 2 and w.numel() >= MIN_NUMEL:
            w32 = w.float()  # (R, C)
            scale = w32.abs().amax(dim=1) / _QMAX  # (R,)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays zero
            out[name] = torch.round(w32 / scale[:, None]).clamp_(-_QMAX, _QMAX).to(torch.int8).contiguous()
            out[name + SCALE_SUFFIX] = scale.contiguous()
        elif w.is_floating_point():
            out[name] = w.float().contiguous().clone()
        else:
            out[name] = w.contiguous().clone()
    return out


def dequantize_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The fp32 state dict back from ``quantize_state``'s form."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name.endswith(SCALE_SUFFIX):
            if name[: -len(SCALE_SUFFIX)] not in tensors:
                raise ArtifactError(f"8-bit encoder weights hold a scale {name!r} without its tensor")
            continue
        scale = tensors.get(name + SCALE_SUFFIX)
        if scale is None:
            out[name] = tensor
            continue
        if tensor.dtype != torch.int8 or tensor.ndim != 2 or scale.shape != (tensor.shape[0],):
            raise ArtifactError(
                f"8-bit encoder tensor {name!r}: expected int8 (R, C) with an (R,) scale, got "
                f"{tensor.dtype} {tuple(tensor.shape)} and scale {tuple(scale.shape)}"
            )
        out[name] = tensor.float() * scale.float()[:, None]  # (R, C)
    return out
