"""Sample what the host does to this machine while a long run goes: one JSON line every INTERVAL s.

Each line: the whole machine's share of busy and steal time since the previous line (/proc/stat
through erc_stream/hoststat.py; steal = time the hypervisor withheld, part of busy), and the time of
a fixed one-thread matmul loop (bf16 256x256 x200, fp32 x100; a few tens of milliseconds, so the
sampler costs the run well under 1% of a core). Written in session 27 beside a MiniLM fit;
`docs/runs/steal_look.py` lines the two up.

    nohup python docs/runs/machine_sampler.py 30 /root/erc-runs/sampler.jsonl > /dev/null 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from erc_stream.hoststat import read_cpu_ticks  # noqa: E402


def timed_mm(a: torch.Tensor, b: torch.Tensor, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        torch.mm(a, b)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("interval", type=float, help="seconds between lines")
    ap.add_argument("out", type=Path, help="JSON lines file, appended to")
    a = ap.parse_args()
    torch.set_num_threads(1)
    a32, b32 = torch.randn(256, 256), torch.randn(256, 256)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    timed_mm(a16, b16, 50), timed_mm(a32, b32, 50)  # warm-up
    prev = read_cpu_ticks()
    if prev is None:
        sys.exit("cannot read /proc/stat on this machine: nothing to sample")
    with a.out.open("a") as out:
        while True:
            t_bf16, t_fp32 = timed_mm(a16, b16, 200), timed_mm(a32, b32, 100)
            now = read_cpu_ticks()
            if now is None:
                sys.exit("/proc/stat became unreadable: sampling stopped")
            total = (now.total - prev.total) or 1
            row = {
                "t": time.time(),
                "bf16_ms": round(t_bf16 * 1e3, 2),
                "fp32_ms": round(t_fp32 * 1e3, 2),
                "busy": round((now.busy - prev.busy) / total, 3),
                "steal": round((now.steal - prev.steal) / total, 4),
            }
            prev = now
            out.write(json.dumps(row) + "\n")
            out.flush()
            time.sleep(a.interval)


if __name__ == "__main__":
    main()
