"""Exact-value tests of the EACL losses on tiny 2-D examples whose cosines are known by hand.

Unit vectors at angle theta are (cos theta, sin theta); cosines between them are cos of the angle
difference: cos 0 = 1, cos 30 = sqrt(3)/2, cos 60 = 1/2, cos 90 = 0, cos 180 = -1.
"""

from __future__ import annotations

import math

import pytest
import torch

from erc_stream.errors import ConfigError
from trainer.losses import (
    LossWeights,
    anchor_adaptation_loss,
    angle_loss,
    cosine_logits,
    distillation_loss,
    stage1_loss,
    supcon_loss,
)

H = math.sqrt(3) / 2  # cos 30 = sin 60


def _unit(deg: float, norm: float = 1.0) -> list[float]:
    rad = math.radians(deg)
    return [norm * math.cos(rad), norm * math.sin(rad)]


# --- The main example: 2 utterances + 2 anchors -------------------------------------------------
# u0 at 0 deg (label 0, length 2 to check normalisation), u1 at 60 deg (label 1),
# A0 at 0 deg (label 0), A1 at 90 deg (label 1).
# Pairwise cosines: u0-u1 = cos60 = 1/2, u0-A0 = 1, u0-A1 = 0,
#                   u1-A0 = cos60 = 1/2,  u1-A1 = cos30 = H, A0-A1 = 0.
def _main_example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    reps = torch.tensor([_unit(0, norm=2.0), _unit(60)])
    labels = torch.tensor([0, 1])
    anchors = torch.tensor([_unit(0), _unit(90)])
    return reps, labels, anchors


def _main_example_by_hand(tau: float, sign: float = 1.0, include_self: bool = False) -> float:
    """L_out for the main example. Each item has exactly one positive, so
    l_i = log(sum_{a != i} exp(s_ia)) - s_ip with s = sign * cos / tau.
    ``sign=-1`` and ``include_self`` give the values a wrong implementation would produce."""

    def s(c: float) -> float:
        return sign * c / tau

    self_term = math.exp(s(1.0)) if include_self else 0.0  # exp(s_ii), cos(x, x) = 1
    # u0: others u1 (1/2), A0 (1), A1 (0); positive A0.
    l_u0 = math.log(math.exp(s(0.5)) + math.exp(s(1.0)) + math.exp(s(0.0)) + self_term) - s(1.0)
    # u1: others u0 (1/2), A0 (1/2), A1 (H); positive A1.
    l_u1 = math.log(2 * math.exp(s(0.5)) + math.exp(s(H)) + self_term) - s(H)
    # A0: others u0 (1), u1 (1/2), A1 (0); positive u0 -> same terms as l_u0.
    l_a0 = math.log(math.exp(s(1.0)) + math.exp(s(0.5)) + math.exp(s(0.0)) + self_term) - s(1.0)
    # A1: others u0 (0), u1 (H), A0 (0); positive u1.
    l_a1 = math.log(2 * math.exp(s(0.0)) + math.exp(s(H)) + self_term) - s(H)
    return (l_u0 + l_u1 + l_a0 + l_a1) / 4


def test_cosine_logits_hand_values() -> None:
    reps, _, anchors = _main_example()
    # rows: u0 -> [cos0, cos90] = [1, 0]; u1 -> [cos60, cos30] = [1/2, H]; divided by tau = 0.5.
    got = cosine_logits(reps, anchors, 0.5)
    assert got.dtype == torch.float32
    assert got.shape == (2, 2)
    assert got.flatten().tolist() == pytest.approx([2.0, 0.0, 1.0, 2 * H], abs=1e-6)


def test_supcon_main_example_tau_1() -> None:
    reps, labels, anchors = _main_example()
    # tau = 1:
    #   l_u0 = log(e^0.5 + e^1 + e^0) - 1      = log(5.367100) - 1 = 0.680270
    #   l_u1 = log(2 e^0.5 + e^H) - H          = log(5.675136) - 0.866025 = 0.870025
    #   l_A0 = l_u0                            = 0.680270
    #   l_A1 = log(2 + e^H) - H                = log(4.377443) - 0.866025 = 0.610439
    #   mean = (0.680270 + 0.870025 + 0.680270 + 0.610439) / 4 = 0.710251
    expected = (
        2 * (math.log(math.exp(0.5) + math.e + 1.0) - 1.0)
        + (math.log(2 * math.exp(0.5) + math.exp(H)) - H)
        + (math.log(2.0 + math.exp(H)) - H)
    ) / 4
    assert expected == pytest.approx(0.7102508901, rel=1e-9)
    assert expected == pytest.approx(_main_example_by_hand(1.0), rel=1e-12)
    assert supcon_loss(reps, labels, anchors, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_supcon_main_example_tau_half_differs_from_tau_1() -> None:
    reps, labels, anchors = _main_example()
    # tau = 0.5 doubles every similarity:
    #   l_u0 = log(e^1 + e^2 + e^0) - 2 = 0.407606;  l_u1 = log(2e + e^(2H)) - 2H = 0.673885
    #   l_A1 = log(2 + e^(2H)) - 2H = 0.302947;      mean = (2*0.407606 + 0.673885 + 0.302947)/4
    expected_half = _main_example_by_hand(0.5)
    assert expected_half == pytest.approx(0.4480108129, rel=1e-9)
    got_half = supcon_loss(reps, labels, anchors, 0.5).item()
    got_one = supcon_loss(reps, labels, anchors, 1.0).item()
    assert got_half == pytest.approx(expected_half, rel=1e-6)
    # The temperature matters: the tau = 1 hand value would not pass for tau = 0.5.
    assert got_half != pytest.approx(_main_example_by_hand(1.0), rel=1e-3)
    assert got_one != pytest.approx(got_half, rel=1e-3)


def test_supcon_sign_flip_would_fail() -> None:
    reps, labels, anchors = _main_example()
    got = supcon_loss(reps, labels, anchors, 1.0).item()
    # Using -cos instead of cos: value 1.616862, far from the right 0.710251.
    assert _main_example_by_hand(1.0, sign=-1.0) == pytest.approx(1.6168624569, rel=1e-9)
    assert got != pytest.approx(_main_example_by_hand(1.0, sign=-1.0), rel=1e-3)
    # Negating the anchors has the same effect as using -cos between utterances and anchors.
    assert supcon_loss(reps, labels, -anchors, 1.0).item() != pytest.approx(got, rel=1e-3)


def test_supcon_excludes_self_similarity() -> None:
    # One utterance and its anchor: each is the other's only positive and the only other item,
    # so l = -log(e^s / e^s) = 0 exactly. With exp(s_ii) = e^(1/tau) in the denominator it would be
    # log(1 + e^(1/tau - s)) > 0.
    reps = torch.tensor([_unit(60)])
    anchors = torch.tensor([_unit(0)])
    loss = supcon_loss(reps, torch.tensor([0]), anchors, 0.5)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    # And on the main example: including self would give 1.133738 instead of 0.710251.
    reps, labels, anchors = _main_example()
    got = supcon_loss(reps, labels, anchors, 1.0).item()
    assert _main_example_by_hand(1.0, include_self=True) == pytest.approx(1.1337377520, rel=1e-9)
    assert got != pytest.approx(_main_example_by_hand(1.0, include_self=True), rel=1e-3)


def test_supcon_ignores_items_without_positives_and_averages_over_positives() -> None:
    # u0 at 0 deg and u1 at 180 deg, both label 0; A0 at 0 deg, A1 at 90 deg. tau = 0.5, s = 2 cos.
    # A1 (label 1) has no positive -> left out of the mean (but stays in the denominators).
    # Cosines: u0-u1 = -1, u0-A0 = 1, u0-A1 = 0, u1-A0 = -1, u1-A1 = 0, A0-A1 = 0.
    #   u0: others u1 (-2), A0 (2), A1 (0); P = {u1, A0}; Z = e^-2 + e^2 + 1
    #       l = -1/2 [(-2 - log Z) + (2 - log Z)] = log Z = 2.142932
    #   u1: others u0 (-2), A0 (-2), A1 (0); P = {u0, A0}; Z = 2 e^-2 + 1
    #       l = -1/2 [(-2 - log Z) + (-2 - log Z)] = log Z + 2 = 2.239545
    #   A0: others u0 (2), u1 (-2), A1 (0); P = {u0, u1}; Z = e^2 + e^-2 + 1; l = log Z = 2.142932
    #   loss = (2.142932 + 2.239545 + 2.142932) / 3 = 2.175136  (dividing by 4 would give 1.631352)
    reps = torch.tensor([_unit(0), _unit(180)])
    anchors = torch.tensor([_unit(0), _unit(90)])
    log_z = math.log(math.exp(2) + math.exp(-2) + 1)
    expected = (2 * log_z + math.log(2 * math.exp(-2) + 1) + 2) / 3
    assert expected == pytest.approx(2.1751360077, rel=1e-9)
    got = supcon_loss(reps, torch.tensor([0, 0]), anchors, 0.5).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert got != pytest.approx(expected * 3 / 4, rel=1e-3)


def test_supcon_gradients_reach_reps_and_anchors() -> None:
    reps, labels, anchors = _main_example()
    reps.requires_grad_(True)
    anchors.requires_grad_(True)
    supcon_loss(reps, labels, anchors, 0.1).backward()
    assert reps.grad is not None and anchors.grad is not None
    assert torch.isfinite(reps.grad).all() and torch.isfinite(anchors.grad).all()
    assert reps.grad.abs().sum() > 0 and anchors.grad.abs().sum() > 0


def test_bf16_inputs_are_computed_in_fp32() -> None:
    reps, labels, anchors = _main_example()
    reps_bf16, anchors_bf16 = reps.bfloat16(), anchors.bfloat16()
    # Same answer as fp32 math on the bf16-rounded values, also inside a bf16 autocast region.
    reference = supcon_loss(reps_bf16.float(), labels, anchors_bf16.float(), 0.1)
    got = supcon_loss(reps_bf16, labels, anchors_bf16, 0.1)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got_autocast = supcon_loss(reps_bf16, labels, anchors_bf16, 0.1)
        logits_autocast = cosine_logits(reps_bf16, anchors_bf16, 0.1)
    assert got.dtype == got_autocast.dtype == logits_autocast.dtype == torch.float32
    assert got.item() == pytest.approx(reference.item(), rel=1e-6)
    assert got_autocast.item() == pytest.approx(reference.item(), rel=1e-6)


# --- angle_loss ----------------------------------------------------------------------------------


def test_angle_loss_0_90_180() -> None:
    # cos(0,90) = 0, cos(0,180) = -1, cos(90,180) = 0.
    # nearest: a0 -> max(0, -1) = 0; a1 -> max(0, 0) = 0; a2 -> max(-1, 0) = 0. mean = 0.
    anchors = torch.tensor([_unit(0), _unit(90), _unit(180)])
    assert angle_loss(anchors).item() == pytest.approx(0.0, abs=1e-7)


def test_angle_loss_0_60_180() -> None:
    # cos(0,60) = 1/2, cos(0,180) = -1, cos(60,180) = cos120 = -1/2.
    # nearest: a0 -> max(1/2, -1) = 1/2; a1 -> max(1/2, -1/2) = 1/2; a2 -> max(-1, -1/2) = -1/2.
    # mean = (1/2 + 1/2 - 1/2) / 3 = 1/6.
    anchors = torch.tensor([_unit(0), _unit(60, norm=3.0), _unit(180)])
    assert angle_loss(anchors).item() == pytest.approx(1 / 6, rel=1e-6)


def test_angle_loss_opposite_and_orthogonal() -> None:
    # Two opposite anchors: each one's nearest has cosine -1 -> loss -1.
    assert angle_loss(torch.tensor([_unit(0), _unit(180)])).item() == pytest.approx(-1.0, rel=1e-6)
    # Orthonormal anchors in 4-D: every off-diagonal cosine is 0 -> loss 0.
    assert angle_loss(torch.eye(4) * 5).item() == pytest.approx(0.0, abs=1e-7)
    # Identical anchors: cosine 1 -> loss 1 (the worst case).
    assert angle_loss(torch.tensor([_unit(30), _unit(30)])).item() == pytest.approx(1.0, rel=1e-6)


def _smallest_angle_deg(anchors: torch.Tensor) -> float:
    a = torch.nn.functional.normalize(anchors.detach().double(), dim=-1)
    cos = (a @ a.T).clamp(-1, 1)
    off = ~torch.eye(len(a), dtype=torch.bool)
    return math.degrees(torch.arccos(cos[off]).min().item())


def test_angle_loss_gradient_step_widens_smallest_angle() -> None:
    # Anchors at 0, 60, 180 deg: the smallest angle is 60 deg (a0-a1). Writing the loss with angles
    # L = (1/3) [2 cos(t1 - t0) + cos(t2 - t1)], dL/dt1 = (1/3)(-2 sin60 + sin120) = -sqrt(3)/6 < 0
    # and dL/dt0 = (2/3) sin60 > 0, so a descent step rotates a1 up and a0 down: the gap widens.
    anchors = torch.nn.Parameter(torch.tensor([_unit(0), _unit(60), _unit(180)]))
    before_angle = _smallest_angle_deg(anchors)
    assert before_angle == pytest.approx(60.0, abs=1e-6)
    optimizer = torch.optim.SGD([anchors], lr=0.1)
    loss_before = angle_loss(anchors)
    loss_before.backward()
    optimizer.step()
    after_angle = _smallest_angle_deg(anchors)
    assert after_angle > before_angle + 1.0
    assert angle_loss(anchors).item() < loss_before.item()


# --- stage1_loss ---------------------------------------------------------------------------------
# Example: u0 at 0 deg (label 0), u1 at 90 deg (label 1); anchors A0 at 0 deg, A1 at 60 deg;
# tau = 1.
# Cosines: u0-u1 = 0, u0-A0 = 1, u0-A1 = 1/2, u1-A0 = 0, u1-A1 = cos30 = H, A0-A1 = 1/2.
#   l_u0 = log(e^0 + e^1 + e^0.5) - 1 = 0.680270   (positive A0)
#   l_u1 = log(e^0 + e^0 + e^H) - H   = 0.610439   (positive A1)
#   l_A0 = log(e^1 + e^0 + e^0.5) - 1 = 0.680270   (positive u0)
#   l_A1 = log(e^0.5 + e^H + e^0.5) - H = 0.870025 (positive u1)
#   L_sup = (0.680270 + 0.610439 + 0.680270 + 0.870025) / 4 = 0.710251
#   L_angle = (cos(A0,A1) + cos(A1,A0)) / 2 = 1/2
#   L_CE: u0 logits [1, 1/2], label 0 -> log(e^1 + e^0.5) - 1 = 0.474077
#         u1 logits [0, H],   label 1 -> log(1 + e^H) - H     = 0.351093;  mean = 0.412585
SUP = (
    2 * (math.log(1 + math.e + math.exp(0.5)) - 1)
    + (math.log(2 + math.exp(H)) - H)
    + (math.log(2 * math.exp(0.5) + math.exp(H)) - H)
) / 4
ANGLE = 0.5
CE = ((math.log(math.e + math.exp(0.5)) - 1) + (math.log(1 + math.exp(H)) - H)) / 2


def _stage1_example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.tensor([_unit(0), _unit(90)]),
        torch.tensor([0, 1]),
        torch.tensor([_unit(0), _unit(60)]),
    )


def test_stage1_hand_constants() -> None:
    assert SUP == pytest.approx(0.7102508901, rel=1e-9)
    assert CE == pytest.approx(0.4125851993, rel=1e-9)


def test_stage1_lambda1_one_is_contrastive_only() -> None:
    reps, labels, anchors = _stage1_example()
    total, parts = stage1_loss(reps, labels, anchors, temperature=1.0, lambda1=1.0, lambda2=0.5)
    # 1 * (0.710251 + 0.5 * 0.5) + 0 * CE = 0.960251; CE is skipped and reported as 0.0.
    assert total.item() == pytest.approx(SUP + 0.5 * ANGLE, rel=1e-6)
    assert parts["sup"] == pytest.approx(SUP, rel=1e-6)
    assert parts["angle"] == pytest.approx(ANGLE, rel=1e-6)
    assert parts["ce"] == 0.0
    assert parts["loss"] == pytest.approx(total.item(), rel=1e-7)


def test_stage1_lambda1_zero_is_cross_entropy_only() -> None:
    reps, labels, anchors = _stage1_example()
    total, parts = stage1_loss(reps, labels, anchors, temperature=1.0, lambda1=0.0, lambda2=0.5)
    assert total.item() == pytest.approx(CE, rel=1e-6)
    assert parts == {
        "loss": pytest.approx(CE, rel=1e-6),
        "sup": 0.0,
        "angle": 0.0,
        "ce": pytest.approx(CE, rel=1e-6),
    }


def test_stage1_mixed_weights() -> None:
    reps, labels, anchors = _stage1_example()
    reps.requires_grad_(True)
    total, parts = stage1_loss(reps, labels, anchors, temperature=1.0, lambda1=0.25, lambda2=0.5)
    # 0.25 * (0.710251 + 0.5 * 0.5) + 0.75 * 0.412585 = 0.240063 + 0.309439 = 0.549502
    expected = 0.25 * (SUP + 0.5 * ANGLE) + 0.75 * CE
    assert expected == pytest.approx(0.5495016220, rel=1e-9)
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert set(parts) == {"loss", "sup", "angle", "ce"}
    assert all(type(v) is float for v in parts.values())
    assert parts["ce"] == pytest.approx(CE, rel=1e-6)
    total.backward()
    assert reps.grad is not None and torch.isfinite(reps.grad).all()


def test_stage1_lambda2_zero_skips_angle() -> None:
    reps, labels, anchors = _stage1_example()
    total, parts = stage1_loss(reps, labels, anchors, temperature=1.0, lambda1=0.5, lambda2=0.0)
    assert total.item() == pytest.approx(0.5 * SUP + 0.5 * CE, rel=1e-6)
    assert parts["angle"] == 0.0


# --- anchor_adaptation_loss ----------------------------------------------------------------------


def test_anchor_adaptation_loss_hand_cross_entropy() -> None:
    reps, labels, anchors = _stage1_example()
    reps.requires_grad_(True)
    anchors.requires_grad_(True)
    # tau = 0.5: u0 logits [2, 1], label 0 -> log(e^2 + e^1) - 2 = 0.313262
    #            u1 logits [0, 2H], label 1 -> log(1 + e^(2H)) - 2H = 0.162902; mean = 0.238082
    expected = ((math.log(math.exp(2) + math.e) - 2) + (math.log(1 + math.exp(2 * H)) - 2 * H)) / 2
    assert expected == pytest.approx(0.2380817845, rel=1e-8)
    loss = anchor_adaptation_loss(reps, labels, anchors, 0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # Stage 2 trains the anchors only.
    assert reps.grad is None
    assert anchors.grad is not None and anchors.grad.abs().sum() > 0


def test_anchor_adaptation_loss_class_weights_weight_the_mean() -> None:
    reps, labels, anchors = _stage1_example()
    # The two terms of the test above, u0 (label 0) and u1 (label 1), weighted 3 and 1:
    # PyTorch's weighted mean is (3 * l0 + 1 * l1) / (3 + 1).
    l0, l1 = math.log(math.exp(2) + math.e) - 2, math.log(1 + math.exp(2 * H)) - 2 * H
    loss = anchor_adaptation_loss(reps, labels, anchors, 0.5, torch.tensor([3.0, 1.0]))
    assert loss.item() == pytest.approx((3 * l0 + l1) / 4, rel=1e-6)
    # Equal weights are the plain mean again.
    same = anchor_adaptation_loss(reps, labels, anchors, 0.5, torch.tensor([2.0, 2.0]))
    assert same.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


# --- argument validation -------------------------------------------------------------------------


def test_loss_weights_defaults_follow_eacl_settings() -> None:
    w = LossWeights()
    assert (w.lambda1, w.lambda2, w.temperature) == (0.9, 0.1, 0.1)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lambda1", 1.5),
        ("lambda1", -0.1),
        ("lambda1", float("nan")),
        ("lambda2", -1.0),
        ("lambda2", float("inf")),
        ("temperature", 0.0),
        ("temperature", -0.1),
        ("temperature", "0.1"),
    ],
)
def test_loss_weights_reject_bad_values(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        LossWeights(**{field: value})
    assert isinstance(info.value, ValueError)
    assert repr(value) in str(info.value)


def test_stage1_rejects_bad_weights() -> None:
    reps, labels, anchors = _stage1_example()
    with pytest.raises(ValueError, match=r"lambda1 must be in \[0, 1\], got 2"):
        stage1_loss(reps, labels, anchors, temperature=1.0, lambda1=2, lambda2=0.1)


def test_bad_tensors_raise_clear_errors() -> None:
    reps, labels, anchors = _main_example()
    with pytest.raises(ValueError, match=r"class ids in \[0, 2\).*got 2"):
        supcon_loss(reps, torch.tensor([0, 2]), anchors, 0.1)
    with pytest.raises(ValueError, match=r"class ids in \[0, 2\).*got -1"):
        stage1_loss(reps, torch.tensor([-1, 0]), anchors, temperature=0.1, lambda1=0.5, lambda2=0.1)
    with pytest.raises(ValueError, match=r"labels must have shape \(B,\) = \(2,\)"):
        supcon_loss(reps, torch.tensor([0, 1, 1]), anchors, 0.1)
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        anchor_adaptation_loss(reps, labels.float(), anchors, 0.1)
    with pytest.raises(ValueError, match="same dimension D"):
        cosine_logits(reps, torch.ones(2, 3), 0.1)
    with pytest.raises(ValueError, match=r"reps must have shape \(N, D\)"):
        supcon_loss(reps[0], labels, anchors, 0.1)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got 0"):
        cosine_logits(reps, anchors, 0)
    with pytest.raises(ValueError, match="at least 2 anchors"):
        angle_loss(anchors[:1])
    with pytest.raises(ValueError, match="reps must be non-empty"):
        supcon_loss(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), anchors, 0.1)


def test_distillation_loss_hand_value() -> None:
    # student softmax([0, ln 3]) = [1/4, 3/4], teacher [1/2, 1/2]:
    # KL = 1/2 ln(2) + 1/2 ln(2/3) = 1/2 ln(4/3)
    logits = torch.tensor([[0.0, math.log(3.0)]])
    teacher = torch.tensor([[0.5, 0.5]])
    assert distillation_loss(logits, teacher).item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)


def test_distillation_loss_is_zero_when_student_agrees_and_allows_zero_teacher_mass() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]])
    agree = torch.softmax(logits, dim=-1)
    assert distillation_loss(logits, agree).item() == pytest.approx(0.0, abs=1e-6)
    one_hot = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # With a one-hot teacher it is the cross-entropy towards that class.
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).item()
    assert distillation_loss(logits, one_hot).item() == pytest.approx(expected, abs=1e-6)


def test_distillation_gradient_moves_the_student_towards_the_teacher() -> None:
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.3, 0.2, 0.1]], requires_grad=True)
    teacher = torch.tensor([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    distillation_loss(logits, teacher).backward()
    # d/dlogits of mean_b KL = (softmax(logits) - p) / B
    expected = (torch.softmax(logits.detach(), dim=-1) - teacher) / 2
    assert torch.allclose(logits.grad, expected, atol=1e-6)


def test_distillation_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(torch.zeros(2, 3), torch.full((2, 4), 0.25))
