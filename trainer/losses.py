"""Losses of Emotion-Anchored Contrastive Learning (EACL, Yu et al. 2024).

Stage 1 trains the encoder, the projection MLP and the emotion anchors together::

    L_stage1 = lambda1 * (L_sup + lambda2 * L_angle) + (1 - lambda1) * L_CE

* ``L_sup`` -- supervised contrastive loss (Khosla et al. 2020, the "L_out" form) over the union
  of the utterance representations and the anchors; anchor ``c`` carries label ``c``.
* ``L_angle`` -- pushes the anchors apart by penalising each anchor's nearest neighbour.
* ``L_CE`` -- cross-entropy over ``cos(r, a_c) / tau``, the same scores used at prediction time.

Stage 2 freezes the encoder and adapts only the anchors with ``L_CE`` (``anchor_adaptation_loss``).

Every function computes in float32 with autocast disabled, whatever the input dtype (bf16 or fp16
representations are cast up first): cosines divided by a temperature of 0.1 reach 10, and their
exponentials and log-sum-exps lose too much precision in bf16. The returned losses are float32.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from erc_stream.errors import ConfigError

__all__ = [
    "LossWeights",
    "cosine_logits",
    "supcon_loss",
    "angle_loss",
    "stage1_loss",
    "anchor_adaptation_loss",
    "triplet_loss",
    "distillation_loss",
    "TRIPLET_MINING",
]

# F.normalize divides by max(||x||, eps): a zero vector becomes zero (cosine 0), never NaN.
_NORM_EPS = 1e-8


@dataclass(frozen=True)
class LossWeights:
    """Weights and temperature of the EACL losses.

    Defaults are the EACL authors' published run settings (their ``run.sh``, used for the paper's
    MELD/EmoryNLP/IEMOCAP results): temperature 0.1, angle-loss weight 0.1 and a cross-entropy
    weight of 0.1, which in this formulation is ``lambda1 = 1 - 0.1 = 0.9``.

    Attributes:
        lambda1: share of the contrastive part ``L_sup + lambda2 * L_angle``; ``1 - lambda1``
            goes to ``L_CE``. In [0, 1].
        lambda2: weight of ``L_angle`` inside the contrastive part. >= 0.
        temperature: tau dividing every cosine, in stage 1 and stage 2. > 0.
    """

    lambda1: float = 0.9
    lambda2: float = 0.1
    temperature: float = 0.1

    def __post_init__(self) -> None:
        for name in ("lambda1", "lambda2", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be finite, got {value!r}")
        if not 0.0 <= self.lambda1 <= 1.0:
            raise ConfigError(f"lambda1 must be in [0, 1], got {self.lambda1!r}")
        if self.lambda2 < 0.0:
            raise ConfigError(f"lambda2 must be >= 0, got {self.lambda2!r}")
        if self.temperature <= 0.0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature!r}")


def cosine_logits(reps: Tensor, anchors: Tensor, temperature: float) -> Tensor:
    """Cosine similarity of every representation to every anchor, divided by ``temperature``.

    Args:
        reps: (B, D) utterance representations.
        anchors: (C, D) emotion anchors.
        temperature: tau > 0.

    Returns:
        (B, C) float32 logits ``cos(r_i, a_c) / tau``.
    """
    _check_temperature(temperature)
    _check_matrix("reps", reps)
    _check_matrix("anchors", anchors)
    _check_same_dim(reps, anchors)
    with _fp32_math(reps):
        r = F.normalize(reps.float(), dim=-1, eps=_NORM_EPS)  # (B, D)
        a = F.normalize(anchors.float(), dim=-1, eps=_NORM_EPS)  # (C, D)
        return (r @ a.T) / temperature  # (B, C)


def supcon_loss(reps: Tensor, labels: Tensor, anchors: Tensor, temperature: float) -> Tensor:
    """Supervised contrastive loss over utterances and anchors (Khosla et al. 2020, L_out).

    The B representations and the C anchors form one set of N = B + C items; anchor ``c`` has
    label ``c``. With ``s_ij = cos(x_i, x_j) / tau`` and ``P(i)`` the other items sharing the
    label of item i::

        l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip) / sum_{a != i} exp(s_ia) )

    The loss is the mean of ``l_i`` over items with ``|P(i)| > 0``; an anchor whose emotion is
    absent from the batch has no positive and is left out (it still appears in the other items'
    denominators). Every utterance has at least its own anchor as a positive.

    Args:
        reps: (B, D) utterance representations, B >= 1.
        labels: (B,) integer labels in [0, C).
        anchors: (C, D) emotion anchors, C >= 1.
        temperature: tau > 0.

    Returns:
        Scalar float32 loss.
    """
    _check_temperature(temperature)
    _check_batch(reps, labels, anchors)
    num_anchors = anchors.shape[0]
    with _fp32_math(reps):
        feats = torch.cat([reps.float(), anchors.float()], dim=0)  # (N, D), N = B + C
        feats = F.normalize(feats, dim=-1, eps=_NORM_EPS)
        item_labels = torch.cat([labels.long(), torch.arange(num_anchors, device=labels.device)])  # (N,)
        n = feats.shape[0]
        sims = (feats @ feats.T) / temperature  # (N, N)
        self_mask = torch.eye(n, dtype=torch.bool, device=feats.device)  # (N, N)
        # -inf on the diagonal removes exp(s_ii) from the denominator exactly.
        sims = sims.masked_fill(self_mask, float("-inf"))
        log_prob = sims - torch.logsumexp(sims, dim=1, keepdim=True)  # (N, N)
        pos_mask = (item_labels[:, None] == item_labels[None, :]) & ~self_mask  # (N, N)
        num_pos = pos_mask.sum(dim=1)  # (N,)
        # where(), not multiplication: the diagonal of log_prob is -inf and -inf * 0 is NaN.
        pos_log_prob = torch.where(pos_mask, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
        per_item = -pos_log_prob / num_pos.clamp(min=1)  # (N,)
        has_pos = (num_pos > 0).to(per_item.dtype)  # (N,)
        # Masked mean rather than boolean indexing: no host sync. has_pos.sum() >= B >= 1.
        return (per_item * has_pos).sum() / has_pos.sum()


def angle_loss(anchors: Tensor) -> Tensor:
    """Mean over anchors of the cosine to their nearest other anchor.

    ``(1/C) * sum_i max_{j != i} cos(a_i, a_j)``. Minimising it widens the smallest angles between
    anchors; the gradient reaches only each anchor's nearest neighbour pair.

    Args:
        anchors: (C, D) emotion anchors, C >= 2.

    Returns:
        Scalar float32 loss in [-1, 1].
    """
    _check_matrix("anchors", anchors)
    if anchors.shape[0] < 2:
        raise ValueError(f"angle_loss needs at least 2 anchors, got anchors of shape {tuple(anchors.shape)}")
    with _fp32_math(anchors):
        a = F.normalize(anchors.float(), dim=-1, eps=_NORM_EPS)  # (C, D)
        cos = a @ a.T  # (C, C)
        self_mask = torch.eye(cos.shape[0], dtype=torch.bool, device=cos.device)
        nearest = cos.masked_fill(self_mask, float("-inf")).amax(dim=1)  # (C,)
        return nearest.mean()


def stage1_loss(
    reps: Tensor,
    labels: Tensor,
    anchors: Tensor,
    *,
    temperature: float,
    lambda1: float,
    lambda2: float,
    class_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Stage-1 objective ``lambda1 * (L_sup + lambda2 * L_angle) + (1 - lambda1) * L_CE``.

    Args:
        reps: (B, D) utterance representations.
        labels: (B,) integer labels in [0, C).
        anchors: (C, D) emotion anchors (C >= 2 when ``lambda1 * lambda2 > 0``).
        temperature, lambda1, lambda2: see ``LossWeights``.
        class_weights: (C,) weights of the cross-entropy term per gold class (rare classes up),
            or None for plain cross-entropy; the weighted mean divides by the summed weights.

    Returns:
        ``(total, parts)``: the scalar float32 loss to back-propagate, and detached floats
        ``{"loss", "sup", "angle", "ce"}`` for logging. A component whose weight is zero is not
        computed at all (it would cost a forward pass for nothing) and is reported as ``0.0``.
    """
    weights = LossWeights(lambda1=lambda1, lambda2=lambda2, temperature=temperature)
    _check_batch(reps, labels, anchors)
    zero = torch.zeros((), dtype=torch.float32, device=reps.device)
    sup = angle = ce = zero
    if weights.lambda1 > 0.0:
        sup = supcon_loss(reps, labels, anchors, weights.temperature)
        if weights.lambda2 > 0.0:
            angle = angle_loss(anchors)
    if weights.lambda1 < 1.0:
        ce = F.cross_entropy(cosine_logits(reps, anchors, weights.temperature), labels.long(), weight=class_weights)
    total = weights.lambda1 * (sup + weights.lambda2 * angle) + (1.0 - weights.lambda1) * ce
    # One device-to-host copy for all four numbers.
    values = torch.stack([total, sup, angle, ce]).detach().cpu().tolist()
    return total, dict(zip(("loss", "sup", "angle", "ce"), values, strict=True))


def anchor_adaptation_loss(
    reps: Tensor, labels: Tensor, anchors: Tensor, temperature: float, class_weights: Tensor | None = None
) -> Tensor:
    """Stage-2 loss: cross-entropy of ``cos(r, a_c) / tau`` with the encoder frozen.

    ``reps`` is detached here, so only the anchors receive a gradient even if the caller
    computed the representations with autograd on.

    Args:
        reps: (B, D) utterance representations from the frozen encoder.
        labels: (B,) integer labels in [0, C).
        anchors: (C, D) emotion anchors being adapted.
        temperature: tau > 0.
        class_weights: (C,) weights per gold class, as in stage 1's cross-entropy (rare classes up),
            or None for the plain mean; with weights the mean is weighted (PyTorch's convention).

    Returns:
        Scalar float32 loss (mean over the batch).
    """
    _check_temperature(temperature)
    _check_batch(reps, labels, anchors)
    return F.cross_entropy(cosine_logits(reps.detach(), anchors, temperature), labels.long(), weight=class_weights)


TRIPLET_MINING = ("batch_hard", "semi_hard")


def triplet_loss(reps: Tensor, labels: Tensor, margin: float, mining: str = "batch_hard") -> Tensor:
    """Triplet loss on cosine distance ``d = 1 - cos`` with in-batch mining (an option from SentEmoContext).

    ``batch_hard`` (Hermans et al. 2017): for every item with at least one positive and one
    negative in the batch, ``relu(max_p d(a, p) - min_n d(a, n) + margin)``; the mean over those items.

    ``semi_hard`` (Schroff et al. 2015): for every positive pair (a, p) whose anchor has a negative,
    the negative is the closest one still farther from a than p (``d(a, n) > d(a, p)``), or, when
    every negative is closer than p, the farthest negative; ``relu(d(a, p) - d(a, n) + margin)``,
    the mean over those pairs.

    A batch with no valid item or pair gives 0 (still connected to ``reps`` for autograd).

    Args:
        reps: (B, D) representations.
        labels: (B,) integer class ids.
        margin: > 0, in cosine-distance units (distances lie in [0, 2]).
        mining: ``batch_hard`` or ``semi_hard``.

    Returns:
        Scalar float32 loss.
    """
    if mining not in TRIPLET_MINING:
        raise ValueError(f"mining must be one of {', '.join(TRIPLET_MINING)}, got {mining!r}")
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not math.isfinite(margin) or margin <= 0:
        raise ValueError(f"margin must be a finite number > 0, got {margin!r}")
    _check_matrix("reps", reps)
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != reps.shape[0]:
        raise ValueError(f"labels must be a (B,) = ({reps.shape[0]},) tensor to match reps {tuple(reps.shape)}")
    with _fp32_math(reps):
        r = F.normalize(reps.float(), dim=-1, eps=_NORM_EPS)  # (B, D)
        dist = 1.0 - r @ r.T  # (B, B)
        same = labels[:, None] == labels[None, :]  # (B, B)
        eye = torch.eye(dist.shape[0], dtype=torch.bool, device=dist.device)
        pos = same & ~eye  # (B, B)
        neg = ~same  # (B, B)
        has_neg = neg.any(dim=1)  # (B,)
        inf = torch.tensor(float("inf"), device=dist.device)
        if mining == "batch_hard":
            hardest_pos = torch.where(pos, dist, -inf).amax(dim=1)  # (B,)
            hardest_neg = torch.where(neg, dist, inf).amin(dim=1)  # (B,)
            valid = pos.any(dim=1) & has_neg  # (B,)
            per_item = F.relu(hardest_pos - hardest_neg + margin)
            per_item = torch.where(valid, per_item, torch.zeros_like(per_item))
            return per_item.sum() / valid.sum().clamp_min(1)
        # semi_hard: for pair (a, p), negatives n of a with d(a, n) > d(a, p).
        d_ap = dist[:, :, None]  # (B, B, 1): anchor a, positive p
        d_an = dist[:, None, :]  # (B, 1, B): anchor a, candidate n
        farther = neg[:, None, :] & (d_an > d_ap)  # (B, B, B)
        closest_farther = torch.where(farther, d_an, inf).amin(dim=2)  # (B, B)
        farthest = torch.where(neg, dist, -inf).amax(dim=1, keepdim=True)  # (B, 1)
        chosen = torch.where(farther.any(dim=2), closest_farther, farthest)  # (B, B)
        valid_pairs = pos & has_neg[:, None]  # (B, B)
        per_pair = F.relu(dist - chosen + margin)
        per_pair = torch.where(valid_pairs, per_pair, torch.zeros_like(per_pair))
        return per_pair.sum() / valid_pairs.sum().clamp_min(1)


def distillation_loss(logits: Tensor, teacher_probs: Tensor) -> Tensor:
    """Knowledge distillation (Hinton et al. 2015): ``KL(p_teacher || softmax(logits))``, mean over the batch.

    The student's logits are the same ``cos(r, a_c) / tau`` its cross-entropy uses; the teacher's
    distribution is what a published model predicted for the same utterances (its calibrated
    confidence). Rows of ``teacher_probs`` must be probability vectors; zeros are allowed.

    Args:
        logits: (B, C) student logits.
        teacher_probs: (B, C) teacher probabilities, each row summing to 1.

    Returns:
        Scalar float32 loss, >= 0, and 0 exactly when the two distributions agree.
    """
    _check_matrix("logits", logits)
    _check_matrix("teacher_probs", teacher_probs)
    if logits.shape != teacher_probs.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and teacher_probs {tuple(teacher_probs.shape)} must have the same shape"
        )
    with _fp32_math(logits):
        p = teacher_probs.float().to(logits.device)  # (B, C)
        log_q = F.log_softmax(logits.float(), dim=-1)  # (B, C)
        # 0 * log 0 is 0: classes the teacher rules out add nothing.
        log_p = torch.where(p > 0, p.clamp_min(1e-30).log(), torch.zeros_like(p))
        return (p * (log_p - log_q)).sum(dim=-1).mean()


@contextlib.contextmanager
def _fp32_math(like: Tensor) -> Iterator[None]:
    """Turn autocast off so the float32 casts inside are not cast back down to bf16/fp16."""
    if like.device.type in ("cuda", "cpu"):
        with torch.autocast(device_type=like.device.type, enabled=False):
            yield
    else:
        yield


def _check_temperature(temperature: float) -> None:
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def _check_matrix(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (N, D), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(x.shape)}")


def _check_same_dim(reps: Tensor, anchors: Tensor) -> None:
    if reps.shape[1] != anchors.shape[1]:
        raise ValueError(
            f"reps and anchors must have the same dimension D, got reps {tuple(reps.shape)} "
            f"and anchors {tuple(anchors.shape)}; project both with the same MLP"
        )
    if reps.device != anchors.device:
        raise ValueError(f"reps are on {reps.device} but anchors on {anchors.device}")


def _check_batch(reps: Tensor, labels: Tensor, anchors: Tensor) -> None:
    _check_matrix("reps", reps)
    _check_matrix("anchors", anchors)
    _check_same_dim(reps, anchors)
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != reps.shape[0]:
        raise ValueError(
            f"labels must have shape (B,) = ({reps.shape[0]},) to match reps "
            f"{tuple(reps.shape)}, got shape {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of class ids, got dtype {labels.dtype}")
    if labels.device != reps.device:
        raise ValueError(f"labels are on {labels.device} but reps on {reps.device}")
    # Out-of-range ids would be a device-side assert on CUDA; one host sync buys a clear message.
    low, high = (int(v) for v in torch.aminmax(labels))
    num_classes = anchors.shape[0]
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"labels must be class ids in [0, {num_classes}) (one per anchor), got {bad}; "
            f"check that the label vocabulary matches the {num_classes} anchors"
        )
