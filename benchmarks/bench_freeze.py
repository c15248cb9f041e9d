"""Training benchmark for --freeze-layers: stage-1 samples/s with the lower N layers frozen and
their output cached, against every layer trained, side by side in one run on one machine.

For each N the same seeded, length-sorted batches of real MELD train window prompts go through
the trainer's own pieces: for N = 0 the whole encoder (``EmotionModel.represent``), for N > 0 the
frozen part's output computed once (``FrozenPrefix.cache``, timed on its own: the one-off cost
per prompt) and the top layers over it each step (the trainer's ``_FrozenStage1Net``). Anchors
from the descriptions every step, the stage-1 loss, backward, clipping, AdamW. The first step of
each N is a warm-up and not counted. ``--dtypes fp32,bf16``: each setting also under bf16 autocast,
as ``fit --dtype bf16`` (or ``auto`` on a CPU with native bf16) trains; the cache is computed in fp32
either way, as the trainer does. ``--mask-rows both``: the last layer's feed-forward on every token
against the mask rows the trainer runs, each batch both ways back to back (order alternating).
``--dropout-masks both``: the trainer's threshold dropout masks against PyTorch's Bernoulli draws
(trainer/dropout.py), paired the same way. ``--attention both``: with threshold masks, the trainer's
training attention (an encoder with fused attention computes it eagerly and calls its own threshold
dropout: ``train_attention``) against the fused attention kept (session 36), paired the same way.

Writes docs/benchmarks/bench_freeze.{json,md}. Usage:
``.venv/bin/python benchmarks/bench_freeze.py --encoder mpnet-base --freeze 0,6,9 [--steps 6]``.
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
    machine_info,
    machine_md,
    mask_rows_modes,
    md_table,
    timed_update,
    train_dtypes,
    write_results,
)

# --dropout-masks: the draws each value runs (trainer/dropout.py)
_DROPOUT_RUNS = {"threshold": ["threshold"], "bernoulli": ["bernoulli"], "both": ["threshold", "bernoulli"]}
_DROPOUT_HELP = (
    "how dropout draws its masks (trainer/dropout.py): threshold (as the trainer does on a CPU), bernoulli "
    "(PyTorch's own, runs before session 36), or both, each batch both ways back to back"
)
# --attention, with threshold masks: keep the encoder's fused attention (True) or not (False, as the trainer)
_ATTENTION_RUNS = {"train": [False], "fused": [True], "both": [False, True]}
_ATTENTION_HELP = (
    "with threshold masks, an encoder with fused attention (sdpa: MiniLM) trains with the trainer's "
    "train_attention (train, as the trainer does), keeps its fused attention (fused, session 36), or both, each "
    "batch both ways back to back; bernoulli masks always keep it"
)


def run_one(
    n_frozen: int,
    enc_path: Path,
    train_ex,
    batches,
    cfg,
    steps: int,
    dtype_name: str = "fp32",
    variants=((True, "threshold", False),),
    fused_adamw: bool = True,
    profile: bool = False,
) -> list[dict]:
    """Timed steps of one frozen-layer count in one dtype, a result per variant: (mask rows only,
    dropout masks, fused attention kept), each batch stepped every way back to back."""
    from transformers import AutoModel, AutoTokenizer

    from erc_stream.model import DTYPES, EmotionModel, ProjectionHead
    from erc_stream.prompt import pad_batch
    from trainer.anchors import describe_emotions
    from trainer.datasets import DATASETS
    from trainer.dropout import TRAIN_ATTENTION, use_dropout_masks
    from trainer.frozen import FrozenPrefix, pad_hidden
    from trainer.losses import stage1_loss
    from trainer.train import (
        _AnchorEncoder,
        _autocast,
        _FrozenStage1Net,
        _Stage1Net,
        adamw,
        adamw_groups,
        adamw_kind,
        param_groups,
    )

    torch.manual_seed(cfg.seed)
    labels = list(DATASETS["meld"].labels)
    tokenizer = AutoTokenizer.from_pretrained(enc_path, local_files_only=True)
    encoder = AutoModel.from_pretrained(enc_path, local_files_only=True)
    head = ProjectionHead(encoder.config.hidden_size, cfg.proj_dim)
    anchor_enc = _AnchorEncoder(encoder, head, tokenizer, describe_emotions("file", labels, "meld").texts, None)
    model = EmotionModel(encoder, head, torch.zeros(len(labels), cfg.proj_dim))
    pad_id = tokenizer.pad_token_id or 0
    used = batches[: steps + 1]
    cache_s, cached = 0.0, {}
    if n_frozen:
        prompts_idx = sorted({i for b in used for i in b})
        prefix = FrozenPrefix.split(encoder, n_frozen, [train_ex[i][0] for i in prompts_idx[:8]], pad_id)
        t0 = time.perf_counter()
        hidden = prefix.cache(
            [train_ex[i][0] for i in prompts_idx], batch_size=cfg.eval_batch_size, cache_dir=None, progress=False
        )
        cache_s = time.perf_counter() - t0
        cached = dict(zip(prompts_idx, hidden, strict=True))
        net: torch.nn.Module = _FrozenStage1Net(model, anchor_enc, prefix)
    else:
        net = _Stage1Net(model, anchor_enc)
    model.train()
    anchor_enc.train()
    if n_frozen:
        prefix.lower.eval()
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    params = trainable + list(head.parameters())
    opt = adamw(param_groups(cfg, encoder, list(head.parameters())), torch.device("cpu"), fused=fused_adamw)
    dtype = DTYPES[dtype_name]
    runs = {variant: {"step_s": [], "optimizer_s": [], "samples": 0, "attention": ""} for variant in variants}
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if profile else None
    for k, batch_idx in enumerate(used):
        if k == 1 and prof is not None:  # after the warm-up step
            prof.start()
        y = torch.tensor([train_ex[i][1] for i in batch_idx])
        for variant in variants[:: 1 if k % 2 == 0 else -1]:
            model.mask_rows_only, masks, fused = variant
            use_dropout_masks(model, masks)  # anchor_enc shares the encoder and head
            if fused and encoder.config._attn_implementation == TRAIN_ATTENTION:
                encoder.set_attn_implementation("sdpa")  # threshold masks with the fused attention (session 36)
            runs[variant]["attention"] = encoder.config._attn_implementation
            t0 = time.perf_counter()
            batch = pad_batch([train_ex[i][0] for i in batch_idx], pad_id)
            with _autocast(torch.device("cpu"), dtype):
                if n_frozen:
                    h, m = pad_hidden([cached[i] for i in batch_idx])  # (B, T, H), (B, T)
                    reps, anchors = net(h, m, batch["mask_index"])
                else:
                    reps, anchors = net(**batch)
            loss, _ = stage1_loss(
                reps.float(), y, anchors.float(), temperature=cfg.temperature, lambda1=cfg.lambda1,
                lambda2=cfg.lambda2,
            )  # fmt: skip
            opt_s = timed_update(loss, opt, params, cfg.max_grad_norm)
            dt = time.perf_counter() - t0
            if k > 0:
                runs[variant]["step_s"].append(dt)
                runs[variant]["optimizer_s"].append(opt_s)
                runs[variant]["samples"] += len(batch_idx)
            label = "" if len(variants) == 1 else f" {_variant_label(variant)}"
            print(f"  freeze {n_frozen} {dtype_name}{label} step {k}{' (warm-up)' if k == 0 else ''}: {dt:.2f} s",
                  flush=True)  # fmt: skip
    table = ""
    if prof is not None:
        prof.stop()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    n_cached = len(cached)
    return [
        {
            "freeze_layers": n_frozen,
            "dtype": dtype_name,
            "adamw": adamw_kind(opt),
            "adamw_groups": adamw_groups(opt),  # [tensors, weight decay]: encoder, its biases and norms, head
            "mask_rows": mask_rows,
            "dropout_masks": masks,
            "attention": r["attention"],
            "fused_attention_kept": fused,
            "layers": encoder.config.num_hidden_layers,
            "steps": len(r["step_s"]),
            "samples": r["samples"],
            "step_s": r["step_s"],
            "optimizer_s": r["optimizer_s"],
            "samples_per_s": r["samples"] / sum(r["step_s"]),
            "cache_prompts": n_cached,
            "cache_s": cache_s,
            "cache_s_per_prompt": cache_s / n_cached if n_cached else 0.0,
            "trainable_encoder_params": sum(p.numel() for p in trainable),
            "profile": table,
        }
        for (mask_rows, masks, fused), r in runs.items()
    ]


def _same(a: dict, b: dict, *keys: str) -> bool:
    return all(a[k] == b[k] for k in keys)


def _ratio(baseline: dict, r: dict) -> str:
    """``r``'s samples/s over ``baseline``'s on the same batches (their summed step times)."""
    return f"{sum(baseline['step_s']) / sum(r['step_s']):.3f}x"


def _variant_label(variant: tuple[bool, str, bool]) -> str:
    mask_rows, masks, fused = variant
    return f"{'mask rows' if mask_rows else 'every token'}, {masks} dropout{', fused attention' if fused else ''}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="minilm-l6", help="a name from `erc-train encoders list` or a folder")
    ap.add_argument("--freeze", default="0,3,5", help="comma-separated frozen layer counts; 0 is the baseline")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per setting (after one warm-up step)")
    ap.add_argument("--dtypes", default="fp32", help="comma list of fp32, bf16 (autocast, as the trainer runs it)")
    add_mask_rows_option(ap)
    add_adamw_option(ap)
    ap.add_argument("--dropout-masks", choices=tuple(_DROPOUT_RUNS), default="threshold", help=_DROPOUT_HELP)
    ap.add_argument("--attention", choices=tuple(_ATTENTION_RUNS), default="train", help=_ATTENTION_HELP)
    ap.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="also profile each setting's timed steps by operator (torch.profiler) into this text file; the "
        "profiler's overhead is in those steps' times",
    )
    ap.add_argument("--out-dir", type=Path, default=DOCS_DIR)
    ap.add_argument("--name", default="bench_freeze")
    args = ap.parse_args()
    dtypes = train_dtypes(ap, args.dtypes)

    from transformers import AutoTokenizer

    from erc_stream.prompt import PromptBuilder
    from trainer.config import TrainConfig
    from trainer.datasets import DATASETS, load_split
    from trainer.dropout import TRAIN_ATTENTION
    from trainer.encoders import resolve_encoder
    from trainer.evaluate import build_examples
    from trainer.train import _length_sorted_batches

    torch.set_grad_enabled(True)
    info = machine_info()
    cfg = TrainConfig(encoder=args.encoder)
    enc_path = resolve_encoder(args.encoder)
    tokenizer = AutoTokenizer.from_pretrained(enc_path, local_files_only=True)
    builder = PromptBuilder(tokenizer, context_turns=cfg.context_turns, max_length=cfg.max_length)
    labels = list(DATASETS["meld"].labels)
    train_ex = build_examples(builder, load_split("meld", "train"), {label: i for i, label in enumerate(labels)})
    batches = _length_sorted_batches([len(p) for p, _ in train_ex], cfg.batch_size, random.Random(cfg.seed))
    print(f"{args.encoder}: MELD train {len(train_ex)} prompts, {len(batches)} batches of {cfg.batch_size}", flush=True)
    modes = mask_rows_modes(args.mask_rows)
    dropouts = _DROPOUT_RUNS[args.dropout_masks]
    attentions = _ATTENTION_RUNS[args.attention]
    variants = [
        (mode, masks, fused)
        for mode in modes
        for masks in dropouts
        for fused in (attentions if masks == "threshold" else [True])
    ]
    results = [
        r
        for n in args.freeze.split(",")
        for d in dtypes
        for r in run_one(
            int(n),
            enc_path,
            train_ex,
            batches,
            cfg,
            args.steps,
            d,
            variants,
            adamw_fused(args.adamw),
            bool(args.profile),
        )
    ]
    rows = []
    for r in results:
        base = next(
            (
                b
                for b in results
                if b["freeze_layers"] == 0
                and _same(b, r, "dtype", "mask_rows", "dropout_masks", "fused_attention_kept")
            ),
            None,
        )
        epoch_s = len(train_ex) / r["samples_per_s"]
        cache_total = r["cache_s_per_prompt"] * len(train_ex)
        rows.append(
            [
                f"{r['freeze_layers']} of {r['layers']}",
                r["dtype"],
                "mask rows" if r["mask_rows"] else "every token",
                r["dropout_masks"],
                r["attention"],
                f"{r['trainable_encoder_params'] / 1e6:.1f}M",
                r["steps"],
                1000 * sum(r["optimizer_s"]) / r["steps"],
                r["samples_per_s"],
                f"{r['samples_per_s'] / base['samples_per_s']:.2f}x" if base else "",
                f"{r['cache_s_per_prompt'] * 1000:.0f} ms" if r["freeze_layers"] else "",
                f"{epoch_s / 60:.0f} min",
                f"{(cache_total + 2 * epoch_s) / 60:.0f} min",
            ]
        )
    paired = []
    for r in results:  # each (layers, dtype) run several ways: the paired ratio over the same batches
        same = ("freeze_layers", "dtype", "dropout_masks", "fused_attention_kept")
        if r["mask_rows"] and len(modes) == 2:
            off = next(o for o in results if not o["mask_rows"] and _same(o, r, *same))
            paired.append(
                f"- {r['freeze_layers']} frozen, {r['dtype']}, {r['dropout_masks']} dropout, {r['attention']} "
                "attention: mask rows "
                f"**{_ratio(off, r)}** the samples/s of every token (the same {r['steps']} batches, each stepped "
                "every way back to back)."
            )
        where = f"- {r['freeze_layers']} frozen, {r['dtype']}, {'mask rows' if r['mask_rows'] else 'every token'}"
        if r["dropout_masks"] == "threshold" and len(dropouts) == 2:
            torch_masks = next(
                o
                for o in results
                if o["dropout_masks"] == "bernoulli" and _same(o, r, "freeze_layers", "dtype", "mask_rows")
            )
            paired.append(
                f"{where}: threshold dropout masks ({r['attention']} attention) **{_ratio(torch_masks, r)}** the "
                f"samples/s of bernoulli ones ({torch_masks['attention']} attention; the same {r['steps']} batches, "
                "each stepped every way back to back)."
            )
        if r["dropout_masks"] == "threshold" and not r["fused_attention_kept"] and len(attentions) == 2:
            kept = next(
                o
                for o in results
                if o["dropout_masks"] == "threshold"
                and o["fused_attention_kept"]
                and _same(o, r, "freeze_layers", "dtype", "mask_rows")
            )
            paired.append(
                f"{where}, threshold dropout masks: {r['attention']} attention **{_ratio(kept, r)}** the samples/s "
                f"of {kept['attention']} attention (the same {r['steps']} batches, each stepped every way back to "
                "back)."
            )
    for n in dict.fromkeys(r["freeze_layers"] for r in results):  # bf16 against fp32, the first variant
        pair = {
            r["dtype"]: r
            for r in results
            if r["freeze_layers"] == n
            and (r["mask_rows"], r["dropout_masks"], r["fused_attention_kept"]) == variants[0]
        }
        if len(pair) == 2:
            paired.append(
                f"- {n} frozen: bf16 autocast {pair['bf16']['samples_per_s'] / pair['fp32']['samples_per_s']:.2f}x "
                f"the samples/s of fp32 (native bf16 on this CPU: {info['cpu_native_bf16']})."
            )
    tables = {(r["freeze_layers"], r["dtype"]): (r, r.pop("profile")) for r in results}  # one per run_one
    if args.profile is not None:
        args.profile.write_text(
            f"Command: {command_line()}\n\n"
            + "\n".join(
                f"{args.encoder}, {r['freeze_layers']} frozen, {r['dtype']}, --mask-rows "
                f"{args.mask_rows}, --dropout-masks {args.dropout_masks}, AdamW {r['adamw']}: the {r['steps']} "
                f"timed steps of {cfg.batch_size} MELD train prompts (each way with `both`), self CPU time by "
                f"operator\n{table}"
                for r, table in tables.values()
            )
        )
    payload = {"command": command_line(), "machine": info, "encoder": args.encoder, "results": results,
               "train_prompts": len(train_ex), "machine_end": machine_info()}  # fmt: skip
    lines = [
        "# Training benchmark: --freeze-layers",
        "",
        f"Command: `{payload['command']}`",
        "",
        machine_md(info, payload["machine_end"]),
        "",
        f"Encoder {args.encoder}; MELD train window prompts ({cfg.context_turns} context turns), the trainer's "
        f"length-sorted batches of {cfg.batch_size} (seed {cfg.seed}), the same batches for every setting; "
        "fp32, or bf16 autocast as the trainer runs it. "
        "A step: pad, forward (the top layers over the cached output, or the whole encoder), anchors, stage-1 "
        f"loss, backward, clip, AdamW ({args.adamw}: `--adamw`); the first step is a warm-up. *cache per prompt*: "
        "the one-off pass through the frozen layers, measured on the prompts of the timed batches (64 a batch).",
        "",
        md_table(
            [
                "frozen layers",
                "dtype",
                "last feed-forward",
                "dropout masks",
                "attention in training",
                "trained encoder params",
                "timed steps",
                "AdamW ms/step",
                "samples/s",
                "vs all layers (same dtype, feed-forward, dropout, attention)",
                "cache per prompt",
                "epoch (projected)",
                "cache + 2 epochs",
            ],
            rows,
        ),
        "",
        "Projections are the measured rates over all train prompts (no length correction: every setting runs "
        "the same batches, so the ratios hold; the absolute times are rough). *Last feed-forward*: the last "
        "encoder layer's feed-forward on each prompt's mask token alone (as the trainer runs it) or on every token "
        "(`--mask-rows off`). *Dropout masks*: 15 random bits a value against p (threshold, as the trainer "
        "draws them on a CPU) or PyTorch's Bernoulli draws (`--dropout-masks`). *Attention in training*: the "
        f"encoder's attention implementation in the timed steps: {TRAIN_ATTENTION} is the trainer's "
        "train_attention (eager, its own dropout module; trainer/dropout.py), sdpa PyTorch's fused attention "
        "(`--attention fused`), eager the encoder's own (mpnet-base).",
        "",
        *paired,
        *([""] if paired else []),
    ]
    write_results(args.name, payload, "\n".join(lines), args.out_dir)


if __name__ == "__main__":
    main()
