"""Training on the GPU with automatic mixed precision: bf16 autocast, and fp16 autocast with a
GradScaler (the trainer's two CUDA precisions): the trainer's own training steps against fp32 on
the same batches, and a whole `erc-train fit` run."""

from __future__ import annotations

import json
import math
import random
import subprocess
from pathlib import Path

import pytest
import torch

from erc_stream.artifact import read_current, verify_version
from tests.train_cli import ERC_TRAIN, cli_env
from trainer.config import TrainConfig
from trainer.distributed import DistContext, shard_batch
from trainer.train import _length_sorted_batches, _optimizer, _prepare, _train_step

pytestmark = pytest.mark.timeout(1200)

REPO = Path(__file__).resolve().parents[2]


def _skip_unsupported(device: torch.device, dtype: str) -> None:
    if dtype == "fp16" and device.type != "cuda":
        pytest.skip("fp16 training (GradScaler) is for CUDA")
    if dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name(device)} has no bf16")


# Relative difference allowed between the first step's AMP loss and the fp32 loss (same weights, same batch):
# bf16 keeps 8 bits of mantissa, fp16 11; the losses themselves are computed in fp32 (trainer/losses.py).
FIRST_LOSS_RTOL = {"bf16": 5e-2, "fp16": 1e-2}
STEPS = 6


def _steps(device: torch.device, dtype: str, tmp: Path, encoder: str) -> tuple[list[dict[str, float]], dict, object]:
    """The trainer's stages (_prepare, _optimizer, _train_step) for STEPS steps; loss parts, weights, optimizer."""
    cfg = TrainConfig(dataset="meld", encoder=encoder, device=device.type, dtype=dtype, dropout=0.0, epochs=1,
                      stage2=False, max_train_conversations=8, max_dev_conversations=2, context_turns=2, batch_size=16,
                      store=tmp / "store", run_dir=tmp / f"run-{dtype}", version=f"amp-{dtype}")  # fmt: skip
    run = _prepare(cfg, DistContext.single(device), resume=False)
    optim = _optimizer(run)
    batches = _length_sorted_batches([len(p) for p, _ in run.train_ex], cfg.batch_size, random.Random(cfg.seed))
    run.model.train()
    run.anchor_enc.train()
    before = {k: v.detach().float().clone() for k, v in run.model.state_dict().items()}
    losses = [_train_step(run, optim, shard_batch(b, 0, 1)) for b in batches[:STEPS]]
    after = {k: v.detach().float() for k, v in run.model.state_dict().items()}
    return losses, {"before": before, "after": after}, optim


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_amp_training_steps_follow_fp32(device: torch.device, dtype: str, tmp_path: Path, train_encoder: str) -> None:
    _skip_unsupported(device, dtype)
    ref, ref_w, _ = _steps(device, "fp32", tmp_path, train_encoder)
    amp, amp_w, optim = _steps(device, dtype, tmp_path, train_encoder)
    # fp16 needs loss scaling against gradient underflow; bf16 has fp32's exponent range and does not.
    assert (optim.scaler is not None) == (dtype == "fp16")
    assert all(math.isfinite(v) for step in amp for v in step.values()), amp
    first = abs(amp[0]["loss"] - ref[0]["loss"]) / ref[0]["loss"]
    moved = max((amp_w["after"][k] - amp_w["before"][k]).abs().max().item() for k in amp_w["after"])
    apart = max((amp_w["after"][k] - ref_w["after"][k]).abs().max().item() for k in ref_w["after"])
    ref_moved = max((ref_w["after"][k] - ref_w["before"][k]).abs().max().item() for k in ref_w["after"])
    print(f"\n{device} {dtype}: first loss {amp[0]['loss']:.5f} vs fp32 {ref[0]['loss']:.5f} (rel {first:.2e}); "
          f"weights moved {moved:.2e} (fp32 {ref_moved:.2e}), apart from fp32 by {apart:.2e} after {STEPS} steps"
          + (f"; loss scale {optim.scaler.get_scale():.0f}" if optim.scaler is not None else ""))  # fmt: skip
    assert first <= FIRST_LOSS_RTOL[dtype]
    assert all(torch.isfinite(v).all() for v in amp_w["after"].values())
    assert moved > 0.1 * ref_moved, "the AMP steps (GradScaler skipping every step?) barely changed the weights"
    if optim.scaler is not None:
        assert 0 < optim.scaler.get_scale() < float("inf")


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_fit_with_amp_trains_and_publishes(
    device: torch.device, dtype: str, tmp_path: Path, train_encoder: str
) -> None:
    _skip_unsupported(device, dtype)
    store = tmp_path / "store"
    cmd = [str(ERC_TRAIN), "fit", "--dataset", "meld", "--encoder", train_encoder, "--device", device.type,
           "--dtype", dtype, "--epochs", "2",
           "--stage2-epochs", "2", "--max-train-conversations", "16", "--max-dev-conversations", "4",
           "--context-turns", "2", "--batch-size", "16", "--store", str(store),
           "--run-dir", str(tmp_path / "run")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1100, cwd=REPO, env=cli_env(), check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    version = read_current(store)
    assert version is not None
    manifest = verify_version(store / version)
    training = manifest["training"]
    assert training["device"].startswith(device.type)
    assert training["dtype"] == {"bf16": "bfloat16", "fp16": "float16"}[dtype]
    history = training["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:
        assert all(math.isfinite(v) for k, v in h.items() if k.startswith("loss_")), h
    # The model learned something: the stage-1 loss went down between the epochs.
    assert history[1]["loss_loss"] < history[0]["loss_loss"], json.dumps(history)
