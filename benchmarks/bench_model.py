"""Model-path benchmark: matmul ceilings, encoder FLOPs, and Predictor.predict on MELD dev.

Three measurements, one run, one machine:

(a) sustained matmul GFLOP/s at the encoder's shapes (tokens x H @ HxH, HxI, IxH, read from
    the version's encoder config) for fp32, bf16 and fp16;
(b) encoder FLOPs per token at the measured prompt lengths (formula in _common.py and the doc);
(c) the worker's model path: ``Predictor.predict`` on the real MELD dev prompts (built with
    trainer.evaluate.build_examples, i.e. the worker's windows), grouped into batches by the
    worker's own MicroBatcher, for fp32, bf16 and dynamic int8 (quantize_dynamic on the
    Linear layers; benchmarked only, not a supported dtype), at batch sizes 1, 8, 32, 64
    (``--mask-rows both``: also with the last layer's feed-forward on every token, paired):
    utterances/s, tokens/s, achieved GFLOP/s and its fraction of the fp32 matmul ceiling,
    plus agreement of bf16/int8 predictions with fp32.

Writes docs/benchmarks/bench_model.{json,md}.  Usage: ``make bench-model`` or
``.venv/bin/python benchmarks/bench_model.py [--store DIR] [--quick]``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from _common import (
    DOCS_DIR,
    MINILM_L6,
    EncoderShape,
    add_mask_rows_option,
    command_line,
    encoder_flops_per_token,
    encoder_pass_flops,
    encoder_shape,
    machine_info,
    machine_md,
    mask_rows_modes,
    md_table,
    meld_dev_examples,
    resolve_model,
    write_results,
)

MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def encoder_matmul_shapes(shape: EncoderShape = MINILM_L6) -> list[tuple[str, int, int, int]]:
    """(name, K, N, count per layer) of the encoder's weight matmuls (tokens x K @ K x N)."""
    h, i = shape.hidden, shape.intermediate
    return [("HxH (q,k,v,out)", h, h, 4), ("HxI (ffn up)", h, i, 1), ("IxH (ffn down)", i, h, 1)]


def bench_matmul(dtype: torch.dtype, tokens: int, k: int, n: int, seconds: float) -> float:
    """Sustained GFLOP/s of (tokens, k) @ (k, n) in ``dtype`` over about ``seconds``, called the way
    the encoder's layers call it (``F.linear`` with a bias, weight stored (N, K))."""
    a = torch.randn(tokens, k).to(dtype)  # (M, K)
    w = torch.randn(n, k).to(dtype)  # (N, K)
    bias = torch.randn(n).to(dtype)  # (N,)
    linear = torch.nn.functional.linear
    with torch.inference_mode():
        for _ in range(3):
            linear(a, w, bias)
        reps, t0 = 0, time.perf_counter()
        while True:
            linear(a, w, bias)
            reps += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds and reps >= 3:
                break
    return 2.0 * tokens * k * n * reps / elapsed / 1e9


def matmul_section(dtypes: list[str], token_counts: list[int], seconds: float, shape: EncoderShape) -> dict:
    shapes = encoder_matmul_shapes(shape)
    out: dict = {}
    for name in dtypes:
        dt = MATMUL_DTYPES[name]
        try:
            per_tokens = {}
            for m in token_counts:
                g = {sname: bench_matmul(dt, m, k, n, seconds) for sname, k, n, _ in shapes}
                # The encoder's mix: per layer 4 HxH + 1 HxI + 1 IxH; time-weighted GFLOP/s.
                flops = {sname: 2 * m * k * n * cnt for sname, k, n, cnt in shapes}
                mix = sum(flops.values()) / sum(flops[s] / (g[s] * 1e9) for s in g) / 1e9
                per_tokens[m] = {**{s: round(v, 2) for s, v in g.items()}, "encoder_mix": round(mix, 2)}
                print(
                    f"  matmul {name} tokens={m}: " + ", ".join(f"{s} {v:.1f}" for s, v in per_tokens[m].items()),
                    flush=True,
                )
            out[name] = per_tokens
        except RuntimeError as exc:  # a dtype this CPU build cannot multiply
            out[name] = {"error": repr(exc)}
    return out


def _batches_like_worker(lengths: list[int], batch_size: int, keys: list | None = None) -> list[list[int]]:
    """Index batches formed by the worker's MicroBatcher with every prompt already waiting
    (the saturated case): oldest first, plus the closest lengths from a pool of 4x batch size,
    never a turn ahead of an earlier turn of its conversation (``keys``). max_batch_tokens is
    the worker default (8192), so at bs=64 long prompts make smaller batches."""
    from erc_stream.batcher import MicroBatcher
    from erc_stream.config import WorkerConfig

    mb: MicroBatcher[int] = MicroBatcher(batch_size, WorkerConfig().max_batch_tokens, 0.0)
    for i, n in enumerate(lengths):
        mb.add(i, n, key=keys[i] if keys is not None else None)
    out = []
    while len(mb):
        out.append(mb.take())
    return out


def _load(version_dir: Path, dtype: str):
    from erc_stream.model import Predictor

    if dtype == "int8":
        from torch.ao.quantization import quantize_dynamic

        p = Predictor.load(version_dir, device="cpu", dtype="fp32")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
            p.model = quantize_dynamic(p.model, {torch.nn.Linear}, dtype=torch.qint8)
        return p
    return Predictor.load(version_dir, device="cpu", dtype=dtype)


@dataclass
class _Tally:
    """What one (dtype, batch size, parts, mask rows) point ran: counts, FLOPs, model time, scores."""

    done: int = 0
    real_tok: int = 0
    pad_tok: int = 0
    passes: int = 0
    flops: float = 0.0
    model_s: float = 0.0
    scores: dict[int, np.ndarray] = field(default_factory=dict)  # utterance index -> scores


def model_section(
    version_dir: Path,
    prompts,
    keys,
    gold,
    dtypes: list[str],
    batch_sizes: list[int],
    budget_s: float,
    ceiling_s: float,
    shape: EncoderShape,
    max_forwards: list[int] = (0,),
    modes: list[bool] = (True,),
) -> tuple[list[dict], dict]:
    """Rows per (dtype, batch size, prompts per forward pass: 0 is one pass, mask rows) and each
    dtype's agreement with fp32. With both mask-rows modes, each batch runs in both back to back
    (their order alternating), so load changes hit both alike; the rows say how far they agree."""
    from erc_stream.model import last_attention
    from erc_stream.prompt import forward_parts

    lengths = [len(p) for p in prompts]
    rows: list[dict] = []
    reference: dict[int, np.ndarray] = {}  # utterance index -> fp32 scores
    agreement: dict = {}
    for dtype in dtypes:
        predictor = _load(version_dir, dtype)
        predictor.warm_up(8)
        applies = last_attention(predictor.model.encoder) is not None
        scores_by_idx: dict[int, np.ndarray] = {}
        # A part as large as the batch is one pass: each batch size runs its distinct policies once.
        points = [(bs, mf) for bs in batch_sizes for mf in sorted({m if 0 < m < bs else 0 for m in max_forwards})]
        for bs, mf in points:
            batches = _batches_like_worker(lengths, bs, keys)
            tallies = {mode: _Tally() for mode in modes}
            t0 = time.perf_counter()
            for k, b in enumerate(batches):
                parts = forward_parts([lengths[i] for i in b], mf or None)  # the passes predict runs
                widths = [max(lengths[b[j]] for j in part) for part in parts]
                for mode in modes[:: 1 if k % 2 == 0 else -1]:
                    t = tallies[mode]
                    predictor.model.mask_rows_only = mode
                    pred = predictor.predict([prompts[i] for i in b], max_forward=mf or None)
                    t.model_s += pred.seconds
                    t.done += len(b)
                    t.real_tok += pred.tokens
                    t.pad_tok += pred.padded_tokens
                    for part, width in zip(parts, widths, strict=True):
                        t.flops += encoder_pass_flops(len(part), width, shape, mask_rows=mode and applies)
                    t.passes += len(parts)
                    for j, i in enumerate(b):
                        t.scores[i] = pred.scores[j]
                if time.perf_counter() - t0 >= budget_s * len(modes):
                    break
            wall = time.perf_counter() - t0
            for mode, t in tallies.items():
                # The ceiling is re-measured right after the point at its own pass shape (mean padded
                # tokens per forward pass), so a changing machine load affects both figures alike.
                ceiling = paired_ceiling(round(t.pad_tok / t.passes), ceiling_s, shape)
                gflops = t.flops / t.model_s / 1e9
                n_batches = _count_batches(batches, t.done)
                row = {
                    "dtype": dtype,
                    "batch_size": bs,
                    "max_forward": mf,
                    "mask_rows": mode and applies,
                    "forward_passes": t.passes,
                    "utterances": t.done,
                    "of": len(prompts),
                    "batches": n_batches,
                    "mean_batch": t.done / n_batches,
                    "utt_per_s": t.done / t.model_s,
                    "real_tokens_per_s": t.real_tok / t.model_s,
                    "padded_tokens_per_s": t.pad_tok / t.model_s,
                    "padding_fraction": 1 - t.real_tok / t.pad_tok,
                    "achieved_gflops": gflops,
                    "fp32_matmul_ceiling_gflops": ceiling,
                    "fraction_of_fp32_ceiling": gflops / ceiling if ceiling else None,
                    "model_s": t.model_s,
                    "wall_s": wall,
                    "ceiling_tokens": round(t.pad_tok / t.passes),
                }
                if len(tallies) > 1 and not mode:
                    rows_only = tallies[True]
                    common = sorted(rows_only.scores)
                    a = np.stack([rows_only.scores[i] for i in common])
                    e = np.stack([t.scores[i] for i in common])
                    row["paired"] = {
                        "mask_rows_speedup": (rows_only.done / rows_only.model_s) / row["utt_per_s"],
                        "max_abs_score_diff": float(np.abs(a - e).max()),
                        "same_label": float((a.argmax(1) == e.argmax(1)).mean()),
                    }
                rows.append(row)
                print(
                    f"  predict {dtype} bs={bs}{f' parts of {mf}' if mf else ''}"
                    f"{'' if len(tallies) == 1 else ' mask rows' if mode else ' every token'}: "
                    f"{row['utt_per_s']:.1f} utt/s, {row['real_tokens_per_s']:.0f} tok/s, "
                    f"{gflops:.1f} GFLOP/s ({t.done} utterances, padding {row['padding_fraction']:.1%})"
                    + (
                        f"; mask rows {row['paired']['mask_rows_speedup']:.3f}x, max score diff "
                        f"{row['paired']['max_abs_score_diff']:.1e}"
                        if "paired" in row
                        else ""
                    ),
                    flush=True,
                )
            scores_by_idx.update(tallies[modes[0]].scores)
        predictor.model.mask_rows_only = True
        if dtype == "fp32":
            reference = scores_by_idx
        elif reference:
            from sklearn.metrics import f1_score

            common = sorted(set(reference) & set(scores_by_idx))
            ref = np.stack([reference[i] for i in common])
            got = np.stack([scores_by_idx[i] for i in common])
            y = [gold[i] for i in common]
            agreement[dtype] = {
                "utterances": len(common),
                "label_agreement_with_fp32": float((ref.argmax(1) == got.argmax(1)).mean()),
                "max_abs_score_diff": float(np.abs(ref - got).max()),
                "mean_abs_score_diff": float(np.abs(ref - got).mean()),
                "weighted_f1_fp32": float(f1_score(y, ref.argmax(1), average="weighted", zero_division=0)),
                "weighted_f1": float(f1_score(y, got.argmax(1), average="weighted", zero_division=0)),
            }
        del predictor
    return rows, agreement


def _count_batches(batches: list[list[int]], done: int) -> int:
    n = seen = 0
    for b in batches:
        if seen >= done:
            break
        seen += len(b)
        n += 1
    return n


def paired_ceiling(tokens: int, seconds: float, shape: EncoderShape) -> float:
    """fp32 encoder-mix matmul GFLOP/s at ``tokens`` rows, measured now."""
    g, f = {}, {}
    for sname, k, n, cnt in encoder_matmul_shapes(shape):
        g[sname] = bench_matmul(torch.float32, tokens, k, n, seconds)
        f[sname] = 2 * tokens * k * n * cnt
    return sum(f.values()) / sum(f[s] / (g[s] * 1e9) for s in g) / 1e9


def render(payload: dict) -> str:
    info, info_end = payload["machine"], payload["machine_end"]
    lines = [
        "# Model-path benchmark",
        "",
        f"Command: `{payload['command']}`",
        "",
        machine_md(info, info_end),
        "",
        f"Model: `{payload['model']['version']}` ({payload['model']['context_turns']} context turns, max_length "
        f"{payload['model']['max_length']}). Prompts: {payload['prompts']['count']} MELD dev utterances "
        f"(`trainer.evaluate.build_examples`), length mean {payload['prompts']['mean_len']:.1f}, median "
        f"{payload['prompts']['p50_len']:.0f}, p90 {payload['prompts']['p90_len']:.0f}, max "
        f"{payload['prompts']['max_len']} tokens.",
        "",
        "## (a) Matmul ceiling at the encoder's shapes (GFLOP/s)",
        "",
        "`F.linear(A, W, b)` (as the encoder's layers call it) with A (tokens x K), W (N x K), sustained for "
        f"{payload['matmul_seconds']} s per cell; *encoder mix* is the time-weighted rate of one layer's "
        "weight matmuls (4 x HxH, 1 x HxI, 1 x IxH), i.e. the best the encoder's linear layers can do.",
        "",
    ]
    shape = EncoderShape(**payload["model"]["encoder_shape"])
    shapes = [s for s, _, _, _ in encoder_matmul_shapes(shape)] + ["encoder_mix"]
    rows = []
    for dt, per in payload["matmul"].items():
        if "error" in per:
            rows.append([dt, "-", per["error"], *([""] * (len(shapes) - 1))])
            continue
        for m, g in per.items():
            rows.append([dt, m, *[g[s] for s in shapes]])
    lines += [md_table(["dtype", "tokens", *shapes], rows), ""]
    mm = payload["matmul"]
    if "fp32" in mm and "bf16" in mm and "error" not in mm["bf16"]:
        ratios = [mm["fp32"][m]["encoder_mix"] / mm["bf16"][m]["encoder_mix"] for m in mm["fp32"] if m in mm["bf16"]]
        if min(ratios) >= 1:
            verdict = (
                f"fp32 is {min(ratios):.1f}-{max(ratios):.1f}x faster than bf16 on this CPU "
                f"(native bf16: {info['cpu_native_bf16']}; without AVX512-BF16/AMX PyTorch converts bf16 to fp32 "
                "inside the kernel)."
            )
        else:
            verdict = (
                f"bf16 is {1 / max(ratios):.1f}-{1 / min(ratios):.1f}x faster than fp32 on this CPU "
                f"(native bf16: {info['cpu_native_bf16']})."
            )
        lines += [f"{verdict} `dtype=auto` serves bf16 only where the CPU has native bf16.", ""]
    f = payload["flops"]
    lines += [
        "## (b) Encoder FLOPs per token",
        "",
        "Forward FLOPs per token of a BERT-style encoder with L layers, hidden H, intermediate I, "
        "over a sequence of T tokens (multiply-add = 2 FLOPs):",
        "",
        "    FLOPs/token = L * (8*H^2 + 4*H*I + 4*T*H)",
        f"                = {shape.layers} * (8*{shape.hidden}^2 + 4*{shape.hidden}*{shape.intermediate} + "
        f"4*T*{shape.hidden}) = {encoder_flops_per_token(0, shape):,} + {4 * shape.layers * shape.hidden:,}*T",
        "",
        "(Q, K, V, output projections 8H^2; feed-forward 4HI; attention scores and weighted sum 4TH. "
        "Embeddings, layer norms, softmax, GELU and the projection head, which runs on one token per "
        "utterance, are under 1% and left out.)",
        "",
        md_table(
            ["T (tokens)", "MFLOP/token", "GFLOP/utterance of length T"],
            [[t, v / 1e6, v * t / 1e9] for t, v in f["per_token"].items()],
        ),
        "",
        f"MELD dev as the worker sees it: {f['dev_total_gflop_unpadded']:.0f} GFLOP unpadded for "
        f"{payload['prompts']['count']} utterances ({f['dev_gflop_per_utt']:.2f} GFLOP per utterance on average). "
        f"At the fp32 encoder-mix ceiling of {f['ceiling_gflops']:.0f} GFLOP/s that bounds the model path at "
        f"~{f['ceiling_utt_per_s']:.0f} utterances/s on this machine with perfect batching and no padding.",
        "",
        "## (c) Worker model path: `Predictor.predict` on MELD dev",
        "",
        "Batches are formed by the worker's own `MicroBatcher` with all prompts waiting (saturated worker; "
        "default max_batch_tokens 8192). *utt/s* and *tokens/s* use model time (`Predictions.seconds`: padding, "
        "forward, softmax, copy to numpy). *Achieved GFLOP/s* counts the FLOPs of the padded batch; "
        "*of fp32 ceiling* divides by the fp32 encoder-mix matmul rate measured right after the point with as many "
        "rows as the point's mean padded forward pass (prompts x width), so load changes hit both alike. *Parts*: "
        "prompts per forward pass (`--max-forward-prompts`): a batch runs as length-sorted parts, each padded to "
        "its own longest prompt, as the worker does on a CPU (blank: one pass). *Last feed-forward*: the last "
        "encoder layer's feed-forward on each prompt's mask token alone (`erc_stream.model.mask_hidden`, as "
        "served; the FLOPs count it so) or on every token (`--mask-rows`; blank: a run from before the option, "
        "every token). int8 is "
        "`torch.ao.quantization.quantize_dynamic` on every `nn.Linear` (weights int8, activations quantized per "
        "batch); it is benchmarked, not a supported dtype: on the served MELD model it cut dev weighted F1 from "
        "0.6365 to 0.3063 (docs/benchmarks/README.md, finding 5). "
        f"Points stop after {payload['budget_s']} s "
        "(then *utterances* < all).",
        "",
    ]
    rows = [
        [
            r["dtype"],
            r["batch_size"],
            r.get("max_forward") or "",
            {True: "mask rows", False: "every token"}.get(r.get("mask_rows"), ""),
            f"{r['utterances']}/{r['of']}",
            round(r["mean_batch"], 1),
            r["utt_per_s"],
            r["real_tokens_per_s"],
            f"{r['padding_fraction']:.1%}",
            r["achieved_gflops"],
            f"{r['fraction_of_fp32_ceiling']:.0%}" if r["fraction_of_fp32_ceiling"] else "-",
        ]
        for r in payload["predict"]
    ]
    lines += [
        md_table(
            [
                "dtype",
                "batch size",
                "parts",
                "last feed-forward",
                "utterances",
                "mean batch",
                "utt/s",
                "tokens/s",
                "padding",
                "achieved GFLOP/s",
                "of fp32 ceiling",
            ],
            rows,
        ),
        "",
    ]
    paired = [r for r in payload["predict"] if "paired" in r]
    if paired:
        lines += [
            "Mask rows against every token, each batch run both ways back to back (order alternating per "
            "batch), same prompts:",
            "",
            md_table(
                ["dtype", "batch size", "parts", "mask rows / every token (utt/s)", "max abs score diff", "same label"],
                [
                    [
                        r["dtype"],
                        r["batch_size"],
                        r.get("max_forward") or "",
                        f"{r['paired']['mask_rows_speedup']:.3f}x",
                        f"{r['paired']['max_abs_score_diff']:.1e}",
                        f"{r['paired']['same_label']:.2%}",
                    ]
                    for r in paired
                ],
            ),
            "",
        ]
    if payload["agreement"]:
        lines += ["Agreement with fp32 on the same utterances (scores are cosines in [-1, 1]):", ""]
        lines += [
            md_table(
                [
                    "dtype",
                    "utterances",
                    "same label as fp32",
                    "max abs score diff",
                    "mean abs score diff",
                    "weighted F1 (fp32 on the same)",
                ],
                [
                    [
                        d,
                        a["utterances"],
                        f"{a['label_agreement_with_fp32']:.2%}",
                        a["max_abs_score_diff"],
                        a["mean_abs_score_diff"],
                        f"{a['weighted_f1']:.4f} ({a['weighted_f1_fp32']:.4f})",
                    ]
                    for d, a in payload["agreement"].items()
                ],
            ),
            "",
        ]
        if payload["model"].get("untrained"):
            lines += [
                "The model here is untrained (random head and anchors), so labels sit close together and "
                "agreement understates what a trained model keeps; see the trained-model check in README.md.",
                "",
            ]
    return "\n".join(lines)


def _int_list(text: str, flag: str, *, least: int) -> list[int]:
    """A comma list of integers >= ``least``, or exit with a message that says what to fix."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise SystemExit(f"{flag} takes whole numbers separated by commas, got {text!r}") from None
    if min(values) < least:
        raise SystemExit(f"{flag} values must be {least} or more, got {text!r}")
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--store",
        type=Path,
        default=None,
        help="model store (default: var/models, var/runs/store, else a benchmark model)",
    )
    ap.add_argument("--dtypes", default="fp32,bf16,int8", help="model-path dtypes: fp32, bf16, int8")
    ap.add_argument("--matmul-dtypes", default="fp32,bf16,fp16")
    ap.add_argument("--batch-sizes", default="1,8,32,64")
    ap.add_argument(
        "--max-forward-prompts",
        default="0",
        help="prompts per forward pass, comma list; 0 = one pass per batch (the worker's auto on a CPU is 8)",
    )
    add_mask_rows_option(ap)
    ap.add_argument("--matmul-tokens", default="", help="token counts for (a); default: mean prompt, x8, x32, x64")
    ap.add_argument("--matmul-seconds", type=float, default=0.4)
    ap.add_argument("--budget-s", type=float, default=12.0, help="max model-time seconds per (dtype, batch size) point")
    ap.add_argument("--conversations", type=int, default=None, help="first N MELD dev conversations (default all)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes to check the script works")
    ap.add_argument("--out-dir", type=Path, default=DOCS_DIR)
    ap.add_argument("--name", default="bench_model")
    args = ap.parse_args()
    if args.quick:
        args.conversations, args.budget_s, args.matmul_seconds = args.conversations or 8, 1.0, 0.05
        args.batch_sizes = "1,8"
    batch_sizes = _int_list(args.batch_sizes, "--batch-sizes", least=1)
    max_forwards = _int_list(args.max_forward_prompts, "--max-forward-prompts", least=0)

    info = machine_info()
    version_dir = resolve_model(args.store)
    from erc_stream.model import Predictor

    probe = Predictor.load(version_dir, device="cpu", dtype="fp32")
    examples, convs = meld_dev_examples(probe.builder, probe.labels, args.conversations)
    prompts = [p for p, _ in examples]
    keys = [c.id for c in convs for _ in c.utterances]  # examples are in conversation order
    lens = np.array([len(p) for p in prompts])
    mean_len = float(lens.mean())
    manifest = probe.manifest
    del probe

    token_counts = (
        [int(x) for x in args.matmul_tokens.split(",")]
        if args.matmul_tokens
        else sorted({int(round(mean_len * b)) for b in (1, 8, 32, 64)})
    )
    print(f"model {version_dir.name}; {len(prompts)} prompts, mean length {mean_len:.1f}", flush=True)
    print("(a) matmul", flush=True)
    shape = encoder_shape(version_dir)
    mm = matmul_section(args.matmul_dtypes.split(","), token_counts, args.matmul_seconds, shape)
    fp32_ceiling = {m: v["encoder_mix"] for m, v in mm.get("fp32", {}).items() if isinstance(v, dict)}

    per_token = {
        int(t): encoder_flops_per_token(int(t), shape) for t in sorted({16, 32, 64, int(round(mean_len)), 128, 256})
    }
    total = float(sum(int(n) * encoder_flops_per_token(int(n), shape) for n in lens))
    ceiling = max(fp32_ceiling.values()) if fp32_ceiling else float("nan")
    flops = {
        "formula": f"L*(8*H^2 + 4*H*I + 4*T*H), L={shape.layers}, H={shape.hidden}, I={shape.intermediate}",
        "per_token": per_token,
        "dev_total_gflop_unpadded": total / 1e9,
        "dev_gflop_per_utt": total / 1e9 / len(prompts),
        "ceiling_gflops": ceiling,
        "ceiling_utt_per_s": ceiling / (total / 1e9 / len(prompts)),
    }

    print("(c) Predictor.predict", flush=True)
    gold = [y for _, y in examples]
    rows, agreement = model_section(
        version_dir,
        prompts,
        keys,
        gold,
        args.dtypes.split(","),
        batch_sizes,
        args.budget_s,
        args.matmul_seconds,
        shape,
        max_forwards,
        mask_rows_modes(args.mask_rows),
    )

    payload = {
        "command": command_line(),
        "machine": info,
        "model": {
            "version": version_dir.name,
            "path": str(version_dir),
            "untrained": manifest["anchors"].get("mode") == "random",
            "context_turns": manifest["prompt"]["context_turns"],
            "max_length": manifest["prompt"]["max_length"],
            "encoder_shape": asdict(shape),
            "weights_dtype": manifest["encoder"].get("weights_dtype", "fp32"),
        },
        "prompts": {
            "count": len(prompts),
            "conversations": len(convs),
            "mean_len": mean_len,
            "p50_len": float(np.percentile(lens, 50)),
            "p90_len": float(np.percentile(lens, 90)),
            "max_len": int(lens.max()),
        },
        "matmul_seconds": args.matmul_seconds,
        "matmul": mm,
        "flops": flops,
        "budget_s": args.budget_s,
        "predict": rows,
        "agreement": agreement,
        "machine_end": machine_info(),
    }
    write_results(args.name, payload, render(payload), args.out_dir)


if __name__ == "__main__":
    main()
