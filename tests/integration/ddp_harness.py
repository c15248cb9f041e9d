"""Worker program of tests/integration/test_distributed.py, run as ``python -m tests.integration.ddp_harness``
either alone (one process) or under torchrun (each rank runs it).

``steps CONFIG_JSON OUT_DIR N``: build the run exactly as ``erc-train fit`` does (the trainer's own
``_prepare`` and ``_optimizer``), then take the first N optimizer steps of epoch 1 with the
trainer's ``_train_step`` on this rank's shares of the global batches. Rank 0 writes the loss
parts of every step (``losses.json``) and every weight after the last step (``weights.safetensors``).

``crash OUT_DIR``: rank 1 raises after joining the group while rank 0 waits at a barrier; the
test checks that no rank is left waiting.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from trainer import distributed as dist_helpers
from trainer.config import TrainConfig
from trainer.train import _length_sorted_batches, _optimizer, _prepare, _train_step


def steps(config_json: str, out_dir: Path, n_steps: int) -> None:
    cfg = TrainConfig.from_json(json.loads(config_json))
    with dist_helpers.distributed(cfg.device) as ctx:
        run = _prepare(cfg, ctx, resume=False)
        optim = _optimizer(run)
        lengths = [len(p) for p, _ in run.train_ex]
        batches = _length_sorted_batches(lengths, cfg.batch_size, random.Random(cfg.seed))[:n_steps]
        run.model.train()
        run.anchor_enc.train()
        losses, shards = [], []
        for batch in batches:
            shard = dist_helpers.shard_batch(batch, ctx.rank, ctx.world_size)
            shards.append({"sizes": list(shard.sizes), "indices": list(shard.indices)})
            losses.append(_train_step(run, optim, shard))
        everyone = [None] * ctx.world_size if ctx.enabled else [shards]
        if ctx.enabled:
            torch.distributed.all_gather_object(everyone, shards)
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            payload = {"world_size": ctx.world_size, "batches": batches, "losses": losses, "shards": everyone}
            (out_dir / "losses.json").write_text(json.dumps(payload))
            weights = {f"model.{k}": v.detach().float().contiguous() for k, v in run.model.state_dict().items()}
            save_file(weights, str(out_dir / "weights.safetensors"))


def crash(out_dir: Path) -> None:
    with dist_helpers.distributed("cpu", timeout_s=120) as ctx:
        (out_dir / f"rank{ctx.rank}.pid").write_text(str(os.getpid()))
        if ctx.rank == 1:
            raise RuntimeError("rank 1 fails on purpose")
        dist_helpers.barrier(ctx, "rank 1, which never comes")


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "steps":
        steps(args[0], Path(args[1]), int(args[2]))
    elif mode == "crash":
        crash(Path(args[0]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
