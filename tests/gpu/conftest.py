"""The CUDA path (`make test-gpu`): AMP training steps, worker inference on the GPU, a benchmark.

Every test here is skipped, with the reason, where torch sees no CUDA device. Two variables
exist to check the tests themselves on a machine without a GPU (the results are then not CUDA
results, and fp16 cases skip, fp16 being a CUDA dtype here):

    ERC_GPU_TESTS_DEVICE=cpu          run them on the CPU instead of cuda
    ERC_GPU_TESTS_CONVERSATIONS=N     use the first N MELD dev conversations instead of all
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
def dev_conversations() -> int | None:
    """How many MELD dev conversations to use: all, or ERC_GPU_TESTS_CONVERSATIONS."""
    raw = os.environ.get("ERC_GPU_TESTS_CONVERSATIONS")
    return int(raw) if raw else None
