"""Per stage-1 epoch of a fit: its training rate beside the CPU steal a sampler saw meanwhile.

Written in session 27 to explain why CPU fits here slowed from one epoch to the next. Two inputs,
both from the same machine and run:

- the fit's log (tqdm lines: ``stage 1 epoch k/N ... [mm:ss<...] ... utt_s=R``), started at
  START (the process's start time, e.g. from ``ps -o lstart``);
- the sampler's JSON lines (``docs/runs/machine_sampler.py``): every INTERVAL seconds the whole
  machine's share of busy and steal time since the previous line.

Each progress bar's elapsed time is laid end to end from START, so the epoch windows are placed
to within the gaps between bars (model loading, anchor texts: tens of seconds in all), which is
close enough against 10-minute epochs. Within each epoch it also prints the training rate per
stretch of 100 steps (from the running ``utt_s``) beside the steal over the same stretch.

    python docs/runs/steal_look.py RUN.log SAMPLER.jsonl --start 2026-12-06T07:27:23Z
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime
from pathlib import Path

BAR = re.compile(r"^(?P<desc>[^:]+?):\s+\d+%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+) \[(?P<el>[\d:]+)[<\]]")
UTT = re.compile(r"utt_s=(?P<r>[\d.]+)")


def seconds(clock: str) -> int:
    parts = [int(p) for p in clock.split(":")]
    return sum(p * 60**i for i, p in enumerate(reversed(parts)))


def bars(log: Path) -> list[dict]:
    """The progress bars in order: desc, and (step, elapsed s, running utt/s) per update."""
    out: list[dict] = []
    for line in log.read_text(errors="replace").replace("\r", "\n").splitlines():
        m = BAR.match(line.strip())
        if not m:
            continue
        n, el = int(m["n"]), seconds(m["el"])
        if not out or out[-1]["desc"] != m["desc"] or n < out[-1]["points"][-1][0]:
            out.append({"desc": m["desc"], "points": []})
        u = UTT.search(line)
        out[-1]["points"].append((n, el, float(u["r"]) if u else None))
    return out


def steal_over(samples: list[dict], t0: float, t1: float) -> tuple[float | None, int]:
    """Mean steal of the sampler lines that fall in [t0, t1] (each covers the interval before it), and their count."""
    inside = [s for s in samples if t0 < s["t"] <= t1]
    if not inside:
        return None, 0
    return sum(s["steal"] for s in inside) / len(inside), len(inside)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("log", type=Path)
    ap.add_argument("sampler", type=Path)
    ap.add_argument("--start", required=True, help="the fit process's start, ISO 8601 UTC")
    ap.add_argument("--stretch", type=int, default=100, help="steps per stretch inside an epoch")
    ap.add_argument("--batch-size", type=int, default=16, help="the fit's batch size")
    a = ap.parse_args()
    samples = [json.loads(x) for x in a.sampler.read_text().splitlines() if x.strip()]
    cursor = datetime.fromisoformat(a.start.replace("Z", "+00:00")).timestamp()
    print("| epoch | steps | train utt/s | wall s | sampler lines | mean CPU steal |")
    print("|---|---|---|---|---|---|")
    stretches = []
    for bar in bars(a.log):
        pts = bar["points"]
        end = cursor + pts[-1][1]
        if bar["desc"].startswith("stage 1 epoch") and pts[-1][2] is not None:
            steal, k = steal_over(samples, cursor, end)
            steal_txt = "" if steal is None else f"{steal:.1%}"
            print(f"| {bar['desc'][14:]} | {pts[-1][0]} | {pts[-1][2]} | {pts[-1][1]} | {k} | {steal_txt} |")
            # per stretch: train seconds from the running rate (seen / rate), the steal over its wall time
            marks = [p for p in pts if p[0] % a.stretch == 0 or p is pts[-1]]
            prev = (0, 0, 0.0)
            for n, el, r in marks:
                if n == prev[0] or not r:
                    continue
                train_s = n * a.batch_size / r  # utterances seen / running utt/s (full batches)
                rate = (n - prev[0]) * a.batch_size / max(train_s - prev[2], 1e-9)
                s, _ = steal_over(samples, cursor + prev[1], cursor + el)
                stretches.append((bar["desc"][14:], prev[0], n, rate, s))
                prev = (n, el, train_s)
        cursor = end
    print("\n| epoch | steps | train utt/s over the stretch | mean CPU steal over its wall time |")
    print("|---|---|---|---|")
    for ep, a0, a1, rate, s in stretches:
        print(f"| {ep} | {a0}-{a1} | {rate:.2f} | {'' if s is None else f'{s:.1%}'} |")


if __name__ == "__main__":
    main()
