"""Shared by the tests that run the real `erc-train` CLI on the real MELD files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

__all__ = ["DATA_DIR", "ERC_TRAIN", "cli_env", "erc_train", "skip_without_meld"]

REPO = Path(__file__).resolve().parents[1]
# erc-train's own default (../shared/datasets from the repository root, where the tests run it)
DATA_DIR = Path(os.environ.get("ERC_DATA_DIR") or REPO.parent / "shared" / "datasets")
ERC_TRAIN = Path(sys.executable).parent / "erc-train"
# Not passed on from the caller's environment: a proxy (the loopback OpenAI server must be reached
# directly), OpenAI settings (a test that wants them sets them) and a torchrun rank (a test that
# starts ranks sets them).
_PROXIES = ("http_proxy", "https_proxy", "all_proxy")
_RANK = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of an `erc-train` (or torchrun) subprocess in a test: offline, the test data,
    wide progress lines; ``extra`` goes on top."""
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in _PROXIES and not k.startswith("OPENAI_") and k not in _RANK}  # fmt: skip
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               ERC_DATA_DIR=str(DATA_DIR), COLUMNS="200", NO_PROXY="127.0.0.1,localhost")  # fmt: skip
    env.update(extra)
    return env


def skip_without_meld() -> None:
    """Skip the calling test module when the MELD CSVs are not where ERC_DATA_DIR points."""
    if not all((DATA_DIR / "meld" / f"{split}_sent_emo.csv").is_file() for split in ("train", "dev")):
        pytest.skip(f"MELD CSVs not found under {DATA_DIR}/meld; set ERC_DATA_DIR", allow_module_level=True)


def erc_train(*args: str, timeout_s: float = 1100) -> subprocess.CompletedProcess:
    """Run `erc-train ARGS` with the test environment; output captured as text."""
    return subprocess.run([str(ERC_TRAIN), *args], env=cli_env(), capture_output=True, text=True, timeout=timeout_s)
