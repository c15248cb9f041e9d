"""The demo's pacing limit against its speed: `erc-stream demo --max-unanswered N` for several N,
interleaved, one after the other, with the machine's steal and idle time per run.

Written in session 31. Each run streams the first 40 MELD dev conversations (423 turns) through the
served model, `--quiet`, and writes its summary JSON (which carries the worker's model-path figures:
batches, prompts, model seconds, padded and real tokens). The table goes to standard output as
Markdown, with the machine's steal and idle time over each run as shares of all its CPU time (not
of busy time, as `erc_stream.hoststat.steal_share` reports steal elsewhere). Run it alone on the
machine: the figures are speed.

    PYTHONPATH=. .venv/bin/python docs/runs/demo_pacing.py --limits 16,32,16,32,8,32 --out /root/s31/pacing
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from erc_stream.hoststat import CpuTicks, read_cpu_ticks

ROOT = Path(__file__).resolve().parents[2]
ERC_STREAM = ROOT / ".venv" / "bin" / "erc-stream"


def ticks() -> CpuTicks:
    t = read_cpu_ticks()
    if t is None:
        sys.exit("/proc/stat has no steal column here: this script needs Linux")
    return t


def run_one(limit: int, out: Path, conversations: int, store: Path) -> dict:
    summary = out / f"limit_{limit}_{time.monotonic_ns()}.json"
    before = ticks()
    with open(summary.with_suffix(".log"), "w", encoding="utf-8") as log:
        proc = subprocess.run(
            [str(ERC_STREAM), "demo", "--store", str(store), "--quiet", "--conversations", str(conversations),
             "--max-unanswered", str(limit), "--summary-json", str(summary)],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, check=False,
        )  # fmt: skip
    after = ticks()
    if proc.returncode != 0:
        sys.exit(f"demo --max-unanswered {limit} failed (rc {proc.returncode}): see {summary.with_suffix('.log')}")
    total = after.total - before.total
    s = json.loads(summary.read_text())
    s["steal_share"] = (after.steal - before.steal) / total
    s["idle_share"] = 1.0 - (after.busy - before.busy) / total  # iowait included
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limits", default="16,32,16,32,8,32", help="--max-unanswered values, run in this order")
    ap.add_argument("--conversations", type=int, default=40)
    ap.add_argument("--store", type=Path, default=ROOT / "models")
    ap.add_argument("--out", type=Path, required=True, help="folder for the summaries and logs")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        "| run | --max-unanswered | events/s | p50 / p95 latency (ms) | batches (mean prompts) "
        "| model prompts/s | padding | model share of wall | steal (of all) | idle (of all) | weighted F1 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, limit in enumerate(int(x) for x in args.limits.split(",")):
        s = run_one(limit, args.out, args.conversations, args.store)
        m = s["model"]
        print(
            f"| {i + 1} | {limit} | {s['events_per_s']:.2f} | {s['latency_ms_p50']:.0f} / {s['latency_ms_p95']:.0f} "
            f"| {m['batches']} ({m['mean_batch']:.1f}) | {m['prompts_per_s']:.2f} | {m['padding_share']:.1%} "
            f"| {m['seconds'] / s['wall_s']:.0%} | {s['steal_share']:.1%} | {s['idle_share']:.1%} "
            f"| {s['metrics']['weighted_f1']:.4f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
