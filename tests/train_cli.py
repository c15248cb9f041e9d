"""Shared by the tests that run the real `erc-train` CLI on the real MELD files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

__all__ = ["DATA_DIR", "ENV", "ERC_TRAIN", "erc_train", "skip_without_meld"]

DATA_DIR = Path(os.environ.get("ERC_DATA_DIR") or "/work/shared/datasets")
ERC_TRAIN = Path(sys.executable).parent / "erc-train"
ENV = {**os.environ, "ERC_DATA_DIR": str(DATA_DIR), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "200"}  # fmt: skip


def skip_without_meld() -> None:
    """Skip the calling test module when the MELD CSVs are not where ERC_DATA_DIR points."""
    if not all((DATA_DIR / "meld" / f"{split}_sent_emo.csv").is_file() for split in ("train", "dev")):
        pytest.skip(f"MELD CSVs not found under {DATA_DIR}/meld; set ERC_DATA_DIR", allow_module_level=True)


def erc_train(*args: str, timeout_s: float = 1100) -> subprocess.CompletedProcess:
    """Run `erc-train ARGS` with the test environment; output captured as text."""
    return subprocess.run([str(ERC_TRAIN), *args], env=ENV, capture_output=True, text=True, timeout=timeout_s)
