"""Training on the GPU with automatic mixed precision: bf16 autocast, and fp16 autocast with a
GradScaler (the trainer's two CUDA precisions), end to end through `erc-train fit`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from erc_stream.artifact import read_current, verify_version

pytestmark = pytest.mark.timeout(1200)

ERC_TRAIN = Path(sys.executable).parent / "erc-train"
REPO = Path(__file__).resolve().parents[2]


def _skip_unsupported(device: torch.device, dtype: str) -> None:
    if dtype == "fp16" and device.type != "cuda":
        pytest.skip("fp16 training (GradScaler) is for CUDA")
    if dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name(device)} has no bf16")


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_fit_with_amp_trains_and_publishes(device: torch.device, dtype: str, tmp_path: Path) -> None:
    _skip_unsupported(device, dtype)
    store = tmp_path / "store"
    cmd = [str(ERC_TRAIN), "fit", "--dataset", "meld", "--device", device.type, "--dtype", dtype, "--epochs", "2",
           "--stage2-epochs", "2", "--max-train-conversations", "16", "--max-dev-conversations", "4",
           "--context-turns", "2", "--batch-size", "16", "--store", str(store), "--run-dir", str(tmp_path / "run")]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1100, cwd=REPO, env=env, check=False)
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
