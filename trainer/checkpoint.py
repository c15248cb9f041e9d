"""Checkpoints of a training run, so a long run survives a stop and resumes exactly.

A run folder holds:

    config.json       the run's TrainConfig (resume reads it; the run's own flags win)
    checkpoint.pt     the latest state: weights, optimizer, scheduler, grad scaler, every RNG,
                      the epoch's batch order and the position in it, history, best-so-far
    best.pt           weights and anchors of the best stage-1 epoch on dev
    train.log         (when started in the background by the caller)

Both ``.pt`` files are written to a temporary name and renamed, so a kill mid-write leaves the
previous checkpoint intact. They are read with ``torch.load(weights_only=True)``: tensors,
numbers, strings, lists and dicts only, no pickled code.

Resuming restores the batch order of the interrupted epoch, skips the batches already done and
restores the RNG streams, so on the same machine and settings (fp32) the resumed run ends with
exactly the weights of an uninterrupted one (tests/integration/test_resume.py).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from erc_stream.errors import ConfigError

__all__ = [
    "CHECKPOINT_FILE",
    "BEST_FILE",
    "CONFIG_FILE",
    "STAGE2_REPS_FILE",
    "Progress",
    "capture_rng",
    "restore_rng",
    "save_atomic",
    "load_file",
    "write_run_config",
    "read_run_config",
]

CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"
CONFIG_FILE = "config.json"
STAGE2_REPS_FILE = "stage2_representations.pt"  # a window run's stage-2 inputs, kept for a resume


@dataclass
class Progress:
    """Where stage 1 stands: what a checkpoint needs besides tensors."""

    epoch: int = 1  # the epoch being trained (1-based); epochs + 1 once stage 1 is over
    batch_pos: int = 0  # batches of `batches` already trained
    batches: list[list[int]] | None = None  # this epoch's batch order (indices into the train examples)
    global_step: int = 0
    epoch_train_s: float = 0.0  # training seconds spent in this epoch so far
    # The whole machine's CPU ticks during this epoch's training steps (/proc/stat; erc_stream/hoststat.py):
    # busy (steal included) and steal, the time a hypervisor withheld. Both stay 0 where /proc/stat is absent.
    epoch_cpu_busy_ticks: int = 0
    epoch_cpu_steal_ticks: int = 0
    running: dict[str, float] = field(default_factory=dict)  # smoothed loss parts, for the log and history
    history: list[dict[str, Any]] = field(default_factory=list)
    best_f1: float = -1.0
    best_epoch: int = 0
    # The precision each stretch of stage 1 trained in: [{"dtype": "bfloat16", "from_step": 0}, ...].
    # dtype=auto resolves per machine, so a run resumed on another CPU may go on in another one.
    precisions: list[dict[str, Any]] = field(default_factory=list)

    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Progress:
        return cls(**state)


def capture_rng(batch_rng: random.Random) -> dict[str, Any]:
    """Every random stream training reads: Python's, NumPy's, torch's (CPU, CUDA) and the batch shuffler."""
    np_state: tuple[Any, ...] = tuple(np.random.get_state())
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "batches": batch_rng.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], batch_rng: random.Random) -> None:
    random.setstate(_as_tuple(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    batch_rng.setstate(_as_tuple(state["batches"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    """random.setstate wants the nested tuples getstate gave; a round trip may turn them into lists."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuple(v) for v in value)
    return value


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary name in the same folder, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_file(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which and what to do
        raise ConfigError(f"cannot read checkpoint {path}: {exc}; delete it to restart that run from scratch") from exc


def write_run_config(run_dir: Path, config: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{CONFIG_FILE}.tmp"
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / CONFIG_FILE)


def read_run_config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(
            f"{run_dir} is not a training run folder (no {CONFIG_FILE}); pass the folder a run printed at its start "
            "(default var/runs/<version>)"
        )
    return json.loads(path.read_text(encoding="utf-8"))
