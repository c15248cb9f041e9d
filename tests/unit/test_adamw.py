"""The trainer's AdamW runs fused on a CPU and takes the step PyTorch's per-tensor loop takes, weight
decay groups included, to float rounding."""

from __future__ import annotations

import torch
from torch import nn

from trainer.train import FUSED_ADAMW_DEVICES, adamw, adamw_kind


def _groups(model: nn.Module) -> list[dict]:
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return [
        {"params": decay, "lr": 1e-2, "weight_decay": 0.1},
        {"params": no_decay, "lr": 1e-2, "weight_decay": 0.0},
    ]


def _train(fused: bool | None, steps: int = 5) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4))
    opt = adamw(_groups(model), torch.device("cpu"), fused=fused)
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_fused_on_a_cpu_unless_asked_for_the_loop():
    assert "cpu" in FUSED_ADAMW_DEVICES and "cuda" in FUSED_ADAMW_DEVICES
    params = [nn.Parameter(torch.zeros(3))]
    assert adamw([{"params": params}], torch.device("cpu")).defaults["fused"] is True
    assert not adamw([{"params": params}], torch.device("cpu"), fused=False).defaults["fused"]


def test_fused_steps_as_the_loop_does():
    start = _train(None, steps=0)
    fused, loop = _train(None), _train(False)
    for f, lo, s in zip(fused, loop, start, strict=True):
        assert not torch.equal(f, s)  # the steps moved every tensor
        torch.testing.assert_close(f, lo, rtol=1e-5, atol=1e-6)


def test_the_kind_is_read_off_the_groups_and_a_loaded_loop_state_keeps_the_loop():
    params = [nn.Parameter(torch.zeros(3))]
    loop = adamw([{"params": params}], torch.device("cpu"), fused=False)
    fused = adamw([{"params": params}], torch.device("cpu"))
    assert (adamw_kind(loop), adamw_kind(fused)) == ("loop", "fused")
    params[0].grad = torch.ones(3)
    loop.step()
    fused.load_state_dict(loop.state_dict())  # a checkpoint written by the loop, resumed
    assert adamw_kind(fused) == "loop"
