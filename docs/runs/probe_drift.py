"""Why does a CPU fit slow down from one stage-1 epoch to the next? A probe on a run's checkpoint.

Sessions 25 and 26 saw every-layer mpnet-base fits in bf16 autocast lose speed epoch after epoch
(5.9 -> 5.6 -> 5.3 utterances/s) while the process's memory and page faults stayed flat. This
script separates the suspects. It rebuilds the run with the trainer's own code (``_prepare``,
``_optimizer``, ``_train_step``; the settings come from the run's config.json) and times the same
fixed training batches in several states, one after another in one process:

- ``ckpt``: the weights, AdamW moments and learning rate of the run's latest checkpoint;
- ``fresh``: the untrained encoder and head, a new optimizer (the run's first step);

each with ``torch.set_flush_denormal`` off (PyTorch's default) and on. Before stepping it counts
subnormal floats (0 < |x| < 1.18e-38) in the weights and the optimizer state, and after the last
step in the gradients. If ``ckpt`` is slower than ``fresh`` and flushing denormals closes the gap,
the slowdown is subnormal arithmetic; if ``ckpt`` and ``fresh`` run alike, it is not in the
model's numbers (the process, the machine). The first and the last state are the same, so a drift
of the machine during the probe shows too.

    ERC_DATA_DIR=../shared/datasets OMP_NUM_THREADS=2 .venv/bin/python docs/runs/probe_drift.py \
        /root/erc-runs/meld-mpnet-w3-s45 --steps 12 --out /root/erc-runs/probe_drift.json

The run folder is only read; the probe's own config goes to a temporary folder. Training steps
change the weights, so each state is loaded afresh before it is timed.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trainer.checkpoint import CHECKPOINT_FILE, load_file, read_run_config  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.distributed import distributed, shard_batch  # noqa: E402
from trainer.train import _optimizer, _prepare, _train_step, _window_batches  # noqa: E402

TINY = torch.finfo(torch.float32).tiny


def subnormals(tensors) -> tuple[int, int]:
    """(subnormal values, all values) over these tensors (any float dtype, read as fp32)."""
    sub = total = 0
    for t in tensors:
        if t is None or not t.is_floating_point():
            continue
        a = t.detach().float().abs()
        sub += int(((a > 0) & (a < TINY)).sum())
        total += a.numel()
    return sub, total


def optimizer_tensors(opt: torch.optim.Optimizer):
    for state in opt.state.values():
        for v in state.values():
            if torch.is_tensor(v) and v.dim() > 0:
                yield v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="a stage-1 run folder holding config.json and checkpoint.pt")
    ap.add_argument("--steps", type=int, default=12, help="timed steps per state, after one warm-up step")
    ap.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    args = ap.parse_args()
    ckpt_path = args.run_dir / CHECKPOINT_FILE
    if not ckpt_path.is_file():
        sys.exit(f"error: {ckpt_path} not found: give a run folder that holds a stage-1 checkpoint")

    cfg = TrainConfig.from_json(read_run_config(args.run_dir))
    scratch = Path(tempfile.mkdtemp(prefix="probe-drift-"))
    cfg = cfg.replace(run_dir=scratch, version="probe-drift", device="cpu")
    ckpt = load_file(ckpt_path)
    print(f"checkpoint: epoch {ckpt['progress']['epoch']}, step {ckpt['progress']['global_step']}", flush=True)

    with distributed("cpu") as ctx:
        run = _prepare(cfg, ctx, resume=False)
        print(f"training dtype {run.dtype}, {torch.get_num_threads()} threads", flush=True)
        fresh_model = copy.deepcopy(run.model.state_dict())
        lengths = [len(p) for p, _ in run.train_ex]
        labels = [y for _, y in run.train_ex]
        batches = _window_batches(lengths, labels, len(run.labels), cfg.batch_size, random.Random(0), cfg.sampler)
        batches = batches[: args.steps + 1]
        utterances = sum(len(b) for b in batches[1:])

        rows = []
        for state, flush in [("ckpt", False), ("ckpt", True), ("fresh", False), ("fresh", True), ("ckpt", False)]:
            run.model.load_state_dict(ckpt["model"] if state == "ckpt" else fresh_model)
            optim = _optimizer(run)
            if state == "ckpt":
                optim.opt.load_state_dict(ckpt["optimizer"])
                optim.sched.load_state_dict(ckpt["scheduler"])
            run.model.train()
            run.anchor_enc.train()
            torch.set_flush_denormal(flush)
            w_sub, w_all = subnormals(run.model.parameters())
            o_sub, o_all = subnormals(optimizer_tensors(optim.opt))
            times = []
            for k, b in enumerate(batches):
                t0 = time.perf_counter()
                _train_step(run, optim, shard_batch(b, 0, 1))
                if k > 0:
                    times.append(time.perf_counter() - t0)
            g_sub, g_all = subnormals(p.grad for p in run.model.parameters())
            row = {
                "state": state,
                "flush_denormal": flush,
                "utt_per_s": round(utterances / sum(times), 3),
                "step_s": [round(t, 3) for t in times],
                "subnormal_weights": [w_sub, w_all],
                "subnormal_optimizer_state": [o_sub, o_all],
                "subnormal_grads_last_step": [g_sub, g_all],
            }
            rows.append(row)
            print(
                f"{state:5s} flush_denormal={str(flush):5s}  {row['utt_per_s']:6.2f} utt/s  "
                f"subnormal: weights {w_sub}/{w_all}, optimizer {o_sub}/{o_all}, grads {g_sub}/{g_all}",
                flush=True,
            )
        torch.set_flush_denormal(False)
    if args.out is not None:
        payload = {"command": " ".join(sys.argv), "run_dir": str(args.run_dir), "rows": rows}
        args.out.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
