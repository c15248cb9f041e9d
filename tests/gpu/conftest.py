"""The CUDA path (`make test-gpu`): AMP training steps, worker inference on the GPU, a benchmark.

Every test here is skipped, with the reason, where torch sees no CUDA device. Two variables
exist to check the tests themselves on a machine without a GPU (the results are then not CUDA
results, and fp16 cases skip, fp16 being a CUDA dtype here):

    ERC_GPU_TESTS_DEVICE=cpu          run them on the CPU instead of cuda
    ERC_GPU_TESTS_CONVERSATIONS=N     use the first N MELD dev conversations instead of all

and one for a GPU machine that cannot hold the default encoder's package (a device whose copy of
the tree is size-limited can carry the shipped model, whose encoder is a MiniLM too):

    ERC_GPU_TESTS_ENCODER=NAME|PATH   the encoder the AMP tests train (default: the trainer's default)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

GPU_DIR = Path(__file__).resolve().parent


def _device() -> torch.device:
    """cuda, or the CPU when ERC_GPU_TESTS_DEVICE=cpu."""
    return torch.device(os.environ.get("ERC_GPU_TESTS_DEVICE", "cuda"))


def no_cuda_reason() -> str | None:
    if _device().type != "cuda" or torch.cuda.is_available():
        return None
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
    return (
        f"no CUDA device: torch {torch.__version__} ({build}) sees no GPU; run `make test-gpu` on a machine with "
        "an NVIDIA GPU and a CUDA build of torch"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = no_cuda_reason()
    if reason is None:
        return
    for item in items:
        if GPU_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device under test: cuda, or the CPU when ERC_GPU_TESTS_DEVICE=cpu."""
    return _device()


@pytest.fixture(scope="session")
def train_encoder() -> str:
    """The encoder the AMP training tests start from: ERC_GPU_TESTS_ENCODER, else the trainer's default."""
    from trainer.encoders import DEFAULT_ENCODER

    return os.environ.get("ERC_GPU_TESTS_ENCODER") or DEFAULT_ENCODER


@pytest.fixture(scope="session")
def dev_conversations() -> int | None:
    """How many MELD dev conversations to use: all, or ERC_GPU_TESTS_CONVERSATIONS."""
    raw = os.environ.get("ERC_GPU_TESTS_CONVERSATIONS")
    return int(raw) if raw else None
