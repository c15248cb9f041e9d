"""Where a stage-1 training step spends its CPU time, by operator (torch.profiler).

The step is the trainer's own pieces, as benchmarks/bench_train.py runs them: the window prompts of
the first MELD train conversations in the trainer's length-sorted batches, the mask-token
representations and the anchors from their descriptions under the trainer's autocast, the stage-1
loss, backward, clipping and the trainer's AdamW (``trainer.train.adamw``). One warm-up step, then
``--steps`` steps under the profiler; the table is sorted by self CPU time.

Usage: ``.venv/bin/python docs/runs/profile_train_step.py --encoder mpnet-base --dtype bf16 --steps 4
[--out FILE]``.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="minilm-l6", help="a name from `erc-train encoders list` or a folder")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16", help="autocast dtype, as `fit --dtype`")
    ap.add_argument("--steps", type=int, default=4, help="profiled steps (after one warm-up step)")
    ap.add_argument("--conversations", type=int, default=100, help="first N MELD train conversations")
    ap.add_argument("--rows", type=int, default=25, help="operators in the table")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = ap.parse_args()

    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModel, AutoTokenizer

    from erc_stream.model import EmotionModel, ProjectionHead
    from erc_stream.prompt import PromptBuilder, pad_batch
    from trainer.anchors import describe_emotions
    from trainer.config import TrainConfig
    from trainer.datasets import DATASETS, load_split
    from trainer.encoders import resolve_encoder
    from trainer.evaluate import build_examples
    from trainer.losses import stage1_loss
    from trainer.train import _AnchorEncoder, _autocast, _length_sorted_batches, adamw

    cfg = TrainConfig(encoder=args.encoder)
    device, dtype = torch.device("cpu"), {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    path = resolve_encoder(args.encoder)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    builder = PromptBuilder(tokenizer, context_turns=cfg.context_turns, max_length=cfg.max_length)
    labels = list(DATASETS["meld"].labels)
    examples = build_examples(
        builder, load_split("meld", "train")[: args.conversations], {label: i for i, label in enumerate(labels)}
    )
    batches = _length_sorted_batches([len(p) for p, _ in examples], cfg.batch_size, random.Random(cfg.seed))
    if len(batches) < args.steps + 1:
        ap.error(f"--conversations {args.conversations} give {len(batches)} batches; need {args.steps + 1}")
    torch.manual_seed(cfg.seed)
    encoder = AutoModel.from_pretrained(path, local_files_only=True)
    head = ProjectionHead(encoder.config.hidden_size, cfg.proj_dim)
    anchor_enc = _AnchorEncoder(encoder, head, tokenizer, describe_emotions("file", labels, "meld").texts, None)
    model = EmotionModel(encoder, head, torch.zeros(len(labels), cfg.proj_dim))
    model.train()
    anchor_enc.train()
    params = list(encoder.parameters()) + list(head.parameters())
    opt = adamw(
        [
            {"params": list(encoder.parameters()), "lr": cfg.lr, "weight_decay": cfg.weight_decay},
            {"params": list(head.parameters()), "lr": cfg.head_lr, "weight_decay": cfg.weight_decay},
        ],
        device,
    )

    def step(batch_idx: list[int]) -> None:
        batch = pad_batch([examples[i][0] for i in batch_idx], tokenizer.pad_token_id or 0)
        y = torch.tensor([examples[i][1] for i in batch_idx])
        with _autocast(device, dtype):
            reps = model.represent(**batch)  # (B, D)
            anchors = anchor_enc()  # (C, D)
        loss, _ = stage1_loss(
            reps.float(), y, anchors.float(), temperature=cfg.temperature, lambda1=cfg.lambda1, lambda2=cfg.lambda2
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()

    step(batches[0])  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch_idx in batches[1 : args.steps + 1]:
            step(batch_idx)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
    head_line = (
        f"{args.encoder}, {args.dtype} autocast, {args.steps} steps of {cfg.batch_size} MELD train prompts "
        f"(torch {torch.__version__}, {torch.get_num_threads()} threads)"
    )
    print(head_line)
    print(table)
    if args.out is not None:
        args.out.write_text(f"Command: {' '.join(sys.argv)}\n{head_line}\n{table}\n")


if __name__ == "__main__":
    main()
