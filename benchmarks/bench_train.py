"""Training benchmark: stage-1 samples/s on MELD train and the projected wall time per epoch,
fp32 against bf16 autocast (``--mask-rows both``: also the last layer's feed-forward on every
token against the mask rows the trainer runs, paired per batch).

The step is the trainer's own (trainer/train.py): the packaged encoder, the projection
head, anchors computed every step from the anchor descriptions by the live encoder, the
stage-1 loss (SupCon + angle + CE), backward, gradient clipping, AdamW. Batches are the
trainer's length-sorted batches of real MELD train prompts (batch size 16 by default),
the same seeded batches for every dtype. A step is timed from padding the batch to the
optimizer step; the first step of each dtype is a warm-up and not counted.

The projection scales the measured time by the encoder FLOPs of the whole epoch's padded
batches over the FLOPs of the measured batches, so a sample of short or long batches does
not bias it.

Writes docs/benchmarks/bench_train.{json,md}. Usage: ``make bench-train`` or
``.venv/bin/python benchmarks/bench_train.py [--steps 20] [--quick]``.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
from _common import (
    DOCS_DIR,
    adamw_fused,
    add_adamw_option,
    add_mask_rows_option,
    command_line,
    encoder_pass_flops,
    machine_info,
    machine_md,
    mask_rows_modes,
    md_table,
    timed_update,
    train_dtypes,
    write_results,
)

# Forward + backward of a linear layer is about 3x its forward FLOPs.
_TRAIN_FLOPS_FACTOR = 3


def run_dtype(
    dtype_name: str,
    train_ex,
    batches,
    cfg,
    steps: int,
    budget_s: float,
    modes: list[bool] = (True,),
    fused_adamw: bool = True,
) -> list[dict]:
    """Timed stage-1 steps in one dtype, a result per mask-rows mode. With both modes, each batch
    is stepped in both back to back (order alternating), so load changes hit both alike."""
    from transformers import AutoModel, AutoTokenizer

    from erc_stream.model import DTYPES, EmotionModel, ProjectionHead, default_encoder_path
    from erc_stream.prompt import pad_batch
    from trainer.anchors import describe_emotions
    from trainer.datasets import DATASETS
    from trainer.dropout import resolve_dropout_masks, use_dropout_masks
    from trainer.losses import stage1_loss
    from trainer.train import _AnchorEncoder, _autocast, adamw, adamw_groups, adamw_kind, param_groups

    torch.manual_seed(cfg.seed)
    device = torch.device("cpu")
    dtype = DTYPES[dtype_name]
    labels = list(DATASETS["meld"].labels)
    path = default_encoder_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    encoder = AutoModel.from_pretrained(path, local_files_only=True)
    source = describe_emotions("file", labels, "meld")
    head = ProjectionHead(encoder.config.hidden_size, cfg.proj_dim)
    anchor_enc = _AnchorEncoder(encoder, head, tokenizer, source.texts, None)
    model = EmotionModel(encoder, head, torch.zeros(len(labels), cfg.proj_dim))
    masks = resolve_dropout_masks(cfg.dropout_masks, device)
    use_dropout_masks(model, masks)  # as a fit does (the anchor encoder shares the encoder and head)
    model.train()
    anchor_enc.train()
    params = list(encoder.parameters()) + list(head.parameters())
    opt = adamw(param_groups(cfg, encoder, list(head.parameters())), device, fused=fused_adamw)
    pad_id = tokenizer.pad_token_id or 0

    runs = {
        mode: {
            "dtype": dtype_name,
            "mask_rows": mode,
            "adamw": adamw_kind(opt),
            "adamw_groups": adamw_groups(opt),  # [tensors, weight decay]: encoder, its biases and norms, head
            "dropout_masks": masks,
            "attention": encoder.config._attn_implementation,
            "step_s": [],
            "optimizer_s": [],
            "batches": [],
            "losses": [],
        }  # fmt: skip
        for mode in modes
    }
    t_start = time.perf_counter()
    for k, batch_idx in enumerate(batches[: steps + 1]):
        prompts = [train_ex[i][0] for i in batch_idx]
        y = torch.tensor([train_ex[i][1] for i in batch_idx], device=device)
        for mode in modes[:: 1 if k % 2 == 0 else -1]:
            model.mask_rows_only = mode
            t0 = time.perf_counter()
            batch = pad_batch(prompts, pad_id)
            with _autocast(device, dtype):
                reps = model.represent(**batch)  # (B, D)
                anchors = anchor_enc()  # (C, D)
            loss, _ = stage1_loss(
                reps.float(), y, anchors.float(), temperature=cfg.temperature, lambda1=cfg.lambda1, lambda2=cfg.lambda2
            )
            opt_s = timed_update(loss, opt, params, cfg.max_grad_norm)
            dt = time.perf_counter() - t0
            if k > 0:  # step 0 is the warm-up
                runs[mode]["step_s"].append(dt)
                runs[mode]["optimizer_s"].append(opt_s)
                runs[mode]["batches"].append(batch_idx)
                runs[mode]["losses"].append(loss.item())
            print(
                f"  {dtype_name}{'' if len(runs) == 1 else ' mask rows' if mode else ' every token'} step {k}"
                f"{' (warm-up)' if k == 0 else ''}: {dt:.2f} s, {len(batch_idx)} samples, "
                f"width {batch['input_ids'].shape[1]}, loss {loss.item():.3f}",
                flush=True,
            )
        if k >= 2 and time.perf_counter() - t_start >= budget_s * len(runs):
            break
    return [{**r, "steps": len(r["step_s"])} for r in runs.values()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per dtype (after one warm-up step)")
    ap.add_argument(
        "--budget-s", type=float, default=150.0, help="stop a dtype after this many seconds (at least 2 timed steps)"
    )
    ap.add_argument("--batch-size", type=int, default=None, help="default: TrainConfig.batch_size (16)")
    add_mask_rows_option(ap)
    add_adamw_option(ap)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out-dir", type=Path, default=DOCS_DIR)
    ap.add_argument("--name", default="bench_train")
    args = ap.parse_args()
    dtypes = train_dtypes(ap, args.dtypes)
    if args.quick:
        args.steps, args.budget_s = 2, 30.0

    from transformers import AutoTokenizer

    from erc_stream.model import default_encoder_path
    from erc_stream.prompt import PromptBuilder
    from trainer.config import TrainConfig
    from trainer.datasets import DATASETS, load_split
    from trainer.evaluate import build_examples
    from trainer.train import _length_sorted_batches

    info = machine_info()
    cfg = TrainConfig() if args.batch_size is None else TrainConfig(batch_size=args.batch_size)
    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path(), local_files_only=True)
    builder = PromptBuilder(
        tokenizer, context_turns=cfg.context_turns, max_length=cfg.max_length, template=cfg.template
    )
    labels = list(DATASETS["meld"].labels)
    train_ex = build_examples(builder, load_split("meld", "train"), {label: i for i, label in enumerate(labels)})
    lengths = [len(p) for p, _ in train_ex]
    batches = _length_sorted_batches(lengths, cfg.batch_size, random.Random(cfg.seed))

    def cost(bs: list[list[int]], mask_rows: bool = True) -> float:  # padded forward FLOPs of these batches
        return float(sum(encoder_pass_flops(len(b), max(lengths[i] for i in b), mask_rows=mask_rows) for b in bs))

    modes = mask_rows_modes(args.mask_rows)
    epoch_cost = {mode: cost(batches, mode) for mode in modes}  # the whole epoch, each way run
    print(f"MELD train: {len(train_ex)} prompts, {len(batches)} batches of {cfg.batch_size} per epoch", flush=True)
    results = []
    for d in dtypes:
        for r in run_dtype(d, train_ex, batches, cfg, args.steps, args.budget_s, modes, adamw_fused(args.adamw)):
            measured_s = sum(r["step_s"])
            samples = sum(len(b) for b in r["batches"])
            c = cost(r["batches"], r["mask_rows"])
            r.update(
                samples=samples,
                measured_s=measured_s,
                samples_per_s=samples / measured_s,
                achieved_train_gflops=_TRAIN_FLOPS_FACTOR * c / measured_s / 1e9,
                projected_epoch_s=measured_s * epoch_cost[r["mask_rows"]] / c,
                naive_projected_epoch_s=len(batches) * measured_s / len(r["step_s"]),
                mean_width=sum(max(lengths[i] for i in b) for b in r["batches"]) / len(r["batches"]),
            )
            del r["batches"]
            results.append(r)
    payload = {
        "command": command_line(),
        "machine": info,
        "data": {
            "dataset": "meld",
            "split": "train",
            "prompts": len(train_ex),
            "batch_size": cfg.batch_size,
            "batches_per_epoch": len(batches),
            "context_turns": cfg.context_turns,
            "max_length": cfg.max_length,
            "epoch_forward_tflop_padded": epoch_cost[modes[0]] / 1e12,
        },
        "results": results,
        "machine_end": machine_info(),
    }
    by = {r["dtype"]: r for r in results if r["mask_rows"] == modes[0]}
    lines = [
        "# Training benchmark (stage 1)",
        "",
        f"Command: `{payload['command']}`",
        "",
        machine_md(info, payload["machine_end"]),
        "",
        f"MELD train: {len(train_ex)} prompts ({cfg.context_turns} context turns, max_length {cfg.max_length}), "
        f"{len(batches)} length-sorted batches of {cfg.batch_size} per epoch (the trainer's own batching, seed "
        f"{cfg.seed}); "
        "the same batches for every dtype. One step = pad, forward (encoder on the batch and on the 7 anchor "
        f"descriptions), stage-1 loss, backward, clip, AdamW ({args.adamw}: `--adamw`; the trainer's parameter "
        f"groups). Dropout draws {results[0]['dropout_masks']} masks and the encoder's attention in training is "
        f"{results[0]['attention']}, as a fit on this device has them (trainer/dropout.py). The first step is a "
        "warm-up and not counted.",
        "",
        md_table(
            [
                "dtype",
                "last feed-forward",
                "timed steps",
                "samples",
                "mean padded width",
                "s/step",
                "AdamW ms/step",
                "samples/s",
                "achieved GFLOP/s (3x fwd)",
                "projected epoch",
            ],
            [
                [
                    r["dtype"],
                    "mask rows" if r["mask_rows"] else "every token",
                    r["steps"],
                    r["samples"],
                    r["mean_width"],
                    r["measured_s"] / r["steps"],
                    1000 * sum(r["optimizer_s"]) / r["steps"],
                    r["samples_per_s"],
                    r["achieved_train_gflops"],
                    f"{r['projected_epoch_s'] / 60:.0f} min",
                ]
                for r in results
            ],
        ),
        "",
        "*projected epoch*: measured time x (encoder FLOPs of all the epoch's padded batches / FLOPs of the measured "
        "batches); the anchor forward and the optimizer add a per-step cost that this scales with FLOPs too, so "
        "it is approximate. *AdamW ms/step*: the optimizer's step alone, within the step. Per-step times: see the "
        "JSON. Training FLOPs are counted as 3x the forward FLOPs "
        "(forward + backward); anchor-description forwards are not counted. *Last feed-forward*: the last "
        "encoder layer's feed-forward on each prompt's mask token alone (`erc_stream.model.mask_hidden`, as the "
        "trainer runs it; the FLOPs count it so) or on every token (`--mask-rows off`).",
        "",
    ]
    for d in dict.fromkeys(r["dtype"] for r in results):
        pair = {r["mask_rows"]: r for r in results if r["dtype"] == d}
        if len(pair) == 2:
            ratio = pair[False]["measured_s"] / pair[True]["measured_s"]
            lines += [
                f"{d}: the same {pair[True]['steps']} batches, each stepped both ways back to back: mask rows "
                f"**{ratio:.3f}x** the samples/s of every token.",
                "",
            ]
    if "fp32" in by and "bf16" in by:
        from erc_stream.model import resolve_dtype

        ratio = by["bf16"]["measured_s"] / by["bf16"]["samples"] / (by["fp32"]["measured_s"] / by["fp32"]["samples"])
        verdict = f"{ratio:.1f}x slower" if ratio > 1 else f"{1 / ratio:.1f}x faster"
        auto = "bf16" if resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16 else "fp32"
        lines += [
            f"bf16 autocast is **{verdict}** than fp32 per sample on this CPU (native bf16: "
            f"{info['cpu_native_bf16']}); `dtype=auto` trains in {auto} here.",
            "",
        ]
    write_results(args.name, payload, "\n".join(lines), args.out_dir)


if __name__ == "__main__":
    main()
