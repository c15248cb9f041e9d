"""8-bit storage of encoder weights: a scale per block of columns, symmetric, dequantized once at load.

A 110M encoder is 440 MB in fp32 and 220 MB in fp16, too much to replace in a git-tracked
model store; in 8 bits it is about a third of fp32 with its scales. Only storage is 8-bit: at
load every weight is turned back into fp32 (then cast once to the serving dtype, as for any
version), so the forward pass and its kernels are the same as for a 16- or 32-bit version.
Whether the rounding costs quality is measured per version by ``erc-train repack`` on dev.

Each 2-D floating-point tensor with at least ``MIN_NUMEL`` values (linear weights and
embedding tables) becomes int8 values ``q`` and fp32 scales ``s`` of shape (R, C / b), one per
block of ``b`` consecutive values of a row: ``w[r, j] ≈ q[r, j] * s[r, j // b]`` with
``s = max|w_block| / 127``; the rest (biases, LayerNorm) stays fp32. ``b`` is ``BLOCK`` where it
divides the row length, else the whole row. A scale per row alone (b = C) let the few large
values of a row coarsen all the others: on mpnet-base (MELD) it moved 1.17% of dev predictions
and 0.60 points of weighted F1, blocks of 32 moved 0.45% (docs/results.md, session 15).
A reader takes ``b`` from the scale's shape, so any block that divides the row length loads.

Matrices with outliers stay in 16 bits: where the largest magnitude exceeds ``OUTLIER_RATIO``
times the matrix's standard deviation, 8 bits would spend their range on a handful of values.
In BERT-like encoders these are most feed-forward output projections (largest value 48-337
standard deviations in 11 of mpnet-base's 12, at most 20 in its attention matrices) and the
position table; on mpnet-base (MELD) keeping them in fp16 moved 0.27% of dev predictions
instead of 0.45%.
They are stored as fp16 tensors without a scale and read back as fp32.
"""

from __future__ import annotations

import torch

from erc_stream.errors import ArtifactError

__all__ = ["BLOCK", "FORMAT", "MIN_NUMEL", "OUTLIER_RATIO", "SCALE_SUFFIX", "dequantize_state", "quantize_state"]

FORMAT = "int8-blockwise-absmax"  # written into the safetensors metadata and checked at load
SCALE_SUFFIX = ".int8_block_scale"
BLOCK = 32  # values per scale along a row
OUTLIER_RATIO = 40.0  # max|w| / std(w) above which a matrix stays fp16
MIN_NUMEL = 4096  # smaller matrices stay fp32
_QMAX = 127


def quantize_state(
    state: dict[str, torch.Tensor], block: int = BLOCK, outlier_ratio: float = OUTLIER_RATIO
) -> dict[str, torch.Tensor]:
    """An encoder state dict in 8-bit storage form (tensors ready for safetensors.save_file)."""
    if block < 1:
        raise ValueError(f"block must be a positive number of values, got {block}")
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.endswith(SCALE_SUFFIX):
            raise ArtifactError(f"encoder tensor {name!r} ends with {SCALE_SUFFIX!r}, which 8-bit storage reserves")
        w = tensor.detach().cpu()
        matrix = w.is_floating_point() and w.ndim == 2 and w.numel() >= MIN_NUMEL
        if matrix and _has_outliers(w, outlier_ratio):
            out[name] = w.to(torch.float16).contiguous()
        elif matrix:
            rows, cols = w.shape
            b = block if cols % block == 0 else cols
            blocks = w.float().reshape(rows, cols // b, b)  # (R, C/b, b)
            scale = blocks.abs().amax(dim=2) / _QMAX  # (R, C/b)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero block stays zero
            q = torch.round(blocks / scale[:, :, None]).clamp_(-_QMAX, _QMAX).to(torch.int8)
            out[name] = q.reshape(rows, cols).contiguous()
            out[name + SCALE_SUFFIX] = scale.contiguous()
        elif w.is_floating_point():
            out[name] = w.float().contiguous().clone()
        else:
            out[name] = w.contiguous().clone()
    return out


def _has_outliers(w: torch.Tensor, ratio: float) -> bool:
    w32 = w.float()
    std = float(w32.std())
    return std > 0 and float(w32.abs().max()) > ratio * std


def dequantize_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The fp32 state dict back from ``quantize_state``'s form."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name.endswith(SCALE_SUFFIX):
            if name[: -len(SCALE_SUFFIX)] not in tensors:
                raise ArtifactError(f"8-bit encoder weights hold a scale {name!r} without its tensor")
            continue
        scale = tensors.get(name + SCALE_SUFFIX)
        if scale is None:  # fp32 vectors, fp16 matrices with outliers, integer buffers
            out[name] = tensor.float() if tensor.is_floating_point() else tensor
            continue
        fits = (
            tensor.dtype == torch.int8
            and tensor.ndim == 2
            and scale.ndim == 2
            and scale.shape[0] == tensor.shape[0]
            and scale.shape[1] > 0
            and tensor.shape[1] % scale.shape[1] == 0
        )
        if not fits:
            raise ArtifactError(
                f"8-bit encoder tensor {name!r}: expected int8 (R, C) with an (R, C / block) scale, got "
                f"{tensor.dtype} {tuple(tensor.shape)} and scale {tuple(scale.shape)}"
            )
        rows, cols = tensor.shape
        b = cols // scale.shape[1]
        out[name] = (tensor.float().reshape(rows, -1, b) * scale.float()[:, :, None]).reshape(rows, cols)
    return out
