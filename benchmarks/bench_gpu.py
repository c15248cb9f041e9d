"""GPU model-path benchmark: ``Predictor.predict`` on MELD dev on a CUDA device.

The worker's model path as it runs on a GPU: a published version loaded by ``Predictor.load``
(weights cast once to the dtype), the real MELD dev prompts (``trainer.evaluate.build_examples``,
the worker's windows), grouped into batches by the worker's own ``MicroBatcher`` with every
prompt waiting (a saturated worker). For fp32, bf16 (where the card supports it) and fp16, at
batch sizes 1, 8, 32, 64 and 128: utterances/s, tokens/s, batch latency p50/p95 (model time,
which ends with the copy of the scores to the host, so it includes the GPU's work), peak GPU
memory, and agreement of the argmax with the same card's fp32 predictions.

Records the card (name, compute capability, memory), the driver and CUDA versions next to the
figures. Writes ``docs/benchmarks/gpu.{json,md}``. Usage: ``make bench-gpu`` or
``.venv/bin/python benchmarks/bench_gpu.py [--store models] [--quick]``. Without a CUDA device
it stops and says so (``--device cpu`` runs the same code on the CPU to check the script).
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from _common import (
    DOCS_DIR,
    ROOT,
    command_line,
    machine_info,
    md_table,
    meld_dev_examples,
    resolve_model,
    write_results,
)
from bench_model import _batches_like_worker

DEFAULT_STORE = ROOT / "models"  # the shipped MELD model


def gpu_info(device: torch.device) -> dict:
    """The card and its software stack, as recorded beside the figures."""
    if device.type != "cuda":
        return {"device": str(device), "note": "not a GPU: a check of the script, not a GPU figure"}
    props = torch.cuda.get_device_properties(device)
    info = {
        "device": str(device),
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        "bf16_supported": torch.cuda.is_bf16_supported(),
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        # erc_stream.model.configure_cuda_attention turns it off at load unless ERC_CUDNN_SDP=1
        "cudnn_sdp": torch.backends.cuda.cudnn_sdp_enabled(),
        "visible_devices": torch.cuda.device_count(),
    }
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,power.limit,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        info["nvidia_smi"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = None
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_dtype(version_dir: Path, device: torch.device, dtype: str, prompts, keys, batch_sizes, budget_s: float):
    """Rows (one per batch size) and the scores by utterance index, for one dtype."""
    from erc_stream.model import Predictor

    predictor = Predictor.load(version_dir, device=device.type, dtype=dtype)
    predictor.warm_up(8)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    lengths = [len(p) for p in prompts]
    scores: dict[int, np.ndarray] = {}
    rows = []
    for bs in batch_sizes:
        batches = _batches_like_worker(lengths, bs, keys)
        for b in batches[:3]:  # kernels for this batch shape picked and cached before timing
            predictor.predict([prompts[i] for i in b])
        _sync(device)
        done = tokens = 0
        latencies: list[float] = []
        t0 = time.perf_counter()
        for b in batches:
            pred = predictor.predict([prompts[i] for i in b])  # ends with .cpu(): the GPU work is in it
            latencies.append(pred.seconds)
            done += len(b)
            tokens += sum(lengths[i] for i in b)
            for j, i in enumerate(b):
                scores[i] = pred.scores[j]
            if time.perf_counter() - t0 >= budget_s:
                break
        model_s = sum(latencies)
        row = {
            "dtype": dtype,
            "batch_size": bs,
            "utterances": done,
            "of": len(prompts),
            "mean_batch": done / len(latencies),
            "utt_per_s": done / model_s,
            "tokens_per_s": tokens / model_s,
            "batch_ms_p50": 1e3 * float(np.percentile(latencies, 50)),
            "batch_ms_p95": 1e3 * float(np.percentile(latencies, 95)),
            "model_s": model_s,
        }
        rows.append(row)
        print(
            f"  {dtype} bs={bs}: {row['utt_per_s']:.0f} utt/s, {row['tokens_per_s']:.0f} tok/s, "
            f"p50 {row['batch_ms_p50']:.1f} ms ({done} utterances)",
            flush=True,
        )
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    for r in rows:
        r["peak_mem_mib"] = peak
    del predictor
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows, scores


def agreement(reference: dict[int, np.ndarray], got: dict[int, np.ndarray]) -> dict:
    common = sorted(set(reference) & set(got))
    ref = np.stack([reference[i] for i in common])
    new = np.stack([got[i] for i in common])
    return {
        "utterances": len(common),
        "same_label_as_fp32": float((ref.argmax(1) == new.argmax(1)).mean()),
        "max_abs_score_diff": float(np.abs(ref - new).max()),
    }


def render(payload: dict) -> str:
    g = payload["gpu"]
    card = (
        f"{g['name']} (compute capability {g['compute_capability']}, {g['memory_gib']} GiB, "
        f"{g['multiprocessors']} SMs; CUDA {g['cuda_runtime']}, cuDNN {g['cudnn']}; "
        f"nvidia-smi: {g.get('nvidia_smi')}); cuDNN attention backend (SDPA) "
        f"{'on (ERC_CUDNN_SDP=1)' if g.get('cudnn_sdp') else 'off'}"
        if "name" in g
        else f"{g['device']}: {g['note']}"
    )
    m = payload["machine"]
    lines = [
        "# GPU model-path benchmark",
        "",
        f"Command: `{payload['command']}`",
        "",
        f"Card: {card}.",
        f"Host: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, torch {m['torch']}, git {m['git']}, "
        f"{m['time_utc']}.",
        "",
        (
            f"Model: `{payload['model']['version']}` ({payload['model']['context_turns']} context turns). Prompts: "
            f"{payload['prompts']['count']} MELD dev utterances, mean length {payload['prompts']['mean_len']:.1f} "
            "tokens. "
            "Batches from the worker's `MicroBatcher` with every prompt waiting. utt/s and tokens/s use model time "
            "(`Predictions.seconds`: pad, copy to the GPU, forward, softmax, copy back). Each point stops after "
            f"{payload['budget_s']} s."
        ),
        "",
        md_table(
            [
                "dtype",
                "batch size",
                "utterances",
                "mean batch",
                "utt/s",
                "tokens/s",
                "batch p50 ms",
                "batch p95 ms",
                "peak MiB",
            ],
            [
                [
                    r["dtype"],
                    r["batch_size"],
                    f"{r['utterances']}/{r['of']}",
                    round(r["mean_batch"], 1),
                    r["utt_per_s"],
                    r["tokens_per_s"],
                    r["batch_ms_p50"],
                    r["batch_ms_p95"],
                    "-" if r["peak_mem_mib"] is None else round(r["peak_mem_mib"]),
                ]
                for r in payload["predict"]
            ],
        ),
        "",
    ]
    if payload["agreement"]:
        lines += [
            "Agreement with fp32 on the same card and utterances:",
            "",
            md_table(
                ["dtype", "utterances", "same label as fp32", "max abs score diff"],
                [
                    [d, a["utterances"], f"{a['same_label_as_fp32']:.2%}", a["max_abs_score_diff"]]
                    for d, a in payload["agreement"].items()
                ],
            ),
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=DEFAULT_STORE, help="model store (default: the shipped models/)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (checks the script only)")
    ap.add_argument("--dtypes", default="fp32,bf16,fp16")
    ap.add_argument("--batch-sizes", default=None, help="default 1,8,32,64,128 (--quick: 1,8)")
    ap.add_argument("--budget-s", type=float, default=5.0, help="max model-time seconds per (dtype, batch size)")
    ap.add_argument("--conversations", type=int, default=None, help="first N MELD dev conversations (default all)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes to check the script works")
    ap.add_argument("--out-dir", type=Path, default=DOCS_DIR)
    ap.add_argument("--name", default="gpu")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"no CUDA device: torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no GPU; "
            "run this on a machine with an NVIDIA GPU and a CUDA build of torch, or pass --device cpu to check the "
            "script"
        )
    if args.quick:
        args.conversations, args.budget_s = args.conversations or 4, 0.5
    args.batch_sizes = args.batch_sizes or ("1,8" if args.quick else "1,8,32,64,128")
    device = torch.device(args.device)
    dtypes = [d for d in args.dtypes.split(",") if d]
    if device.type == "cpu":
        dtypes = [d for d in dtypes if d != "fp16"]  # fp16 is a CUDA dtype here (erc_stream.model)
    elif not torch.cuda.is_bf16_supported():
        dtypes = [d for d in dtypes if d != "bf16"]
    batch_sizes = [int(x) for x in args.batch_sizes.split(",")]

    info = machine_info()
    version_dir = resolve_model(args.store)
    from erc_stream.model import Predictor

    probe = Predictor.load(version_dir, device="cpu", dtype="fp32")
    examples, convs = meld_dev_examples(probe.builder, probe.labels, args.conversations)
    prompts = [p for p, _ in examples]
    keys = [c.id for c in convs for _ in c.utterances]  # examples are in conversation order
    model = {"version": version_dir.name, "context_turns": probe.builder.context_turns}
    del probe
    print(f"model {version_dir.name} on {device}; {len(prompts)} prompts", flush=True)

    rows, agree, reference = [], {}, None
    for dtype in dtypes:
        r, scores = bench_dtype(version_dir, device, dtype, prompts, keys, batch_sizes, args.budget_s)
        rows += r
        if dtype == "fp32":
            reference = scores
        elif reference is not None:
            agree[dtype] = agreement(reference, scores)
    lens = np.array([len(p) for p in prompts])
    payload = {
        "command": command_line(),
        "machine": info,
        "gpu": gpu_info(device),
        "model": model,
        "prompts": {"count": len(prompts), "mean_len": float(lens.mean())},
        "budget_s": args.budget_s,
        "predict": rows,
        "agreement": agree,
    }
    write_results(args.name, payload, render(payload), args.out_dir)


if __name__ == "__main__":
    main()
