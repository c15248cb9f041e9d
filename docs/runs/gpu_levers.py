"""Issue 11's levers at full budget over three seeds, several runs side by side on one machine.

Each lever is one `erc-train fit` setting against the full method ("full"); every (lever, seed)
pair is one run: 3-epoch MiniLM window runs on MELD by default. A GPU such as an H200 holds
eight of these at once (`--parallel 8`), so 30 runs fit one 15-minute lease; on a 2-core CPU
one run takes about an hour. A run already published is skipped, a run with a checkpoint is
resumed, the rest start fresh; SIGTERM/Ctrl-C stops every child at its next step (each
checkpoints and exits 75) and the next call goes on where they were.

    python docs/runs/gpu_levers.py --runs /root/erc-runs/gpu-levers [--parallel 8] [--levers full,ce-only]
    python docs/runs/summarize.py --levers /root/erc-runs/gpu-levers/store

Logs: RUNS/<version>.log; commands and exit codes: RUNS/commands.txt.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Lever name -> the fit flags that set it (later flags win over BASE: typer keeps the last value).
LEVERS: dict[str, list[str]] = {
    "full": [],
    "ce-only": ["--lambda1", "0", "--no-stage2"],
    "eacl-schedule": ["--lr", "1e-5", "--head-lr", "1e-3", "--batch-size", "32", "--epochs", "10"],
    "anon": ["--speakers", "anonymous"],
    "triplet": ["--triplet-weight", "1.0"],
    "l2-03": ["--lambda2", "0.3"],
    "no-angle": ["--lambda2", "0"],
    "plain-anchors": ["--anchors", "plain"],
    "balanced": ["--sampler", "balanced"],
    "sqrtw": ["--class-weighting", "sqrt_inverse"],
}
BASE = ["--dataset", "meld", "--architecture", "window", "--epochs", "3", "--dtype", "auto"]
SEEDS = (42, 43, 44)
PREFIX = "lev-"


@dataclass(frozen=True)
class Job:
    lever: str
    seed: int

    @property
    def version(self) -> str:
        return f"{PREFIX}{self.lever}-s{self.seed}"


def plan(levers: list[str], seeds: list[int]) -> list[Job]:
    """Every (lever, seed) pair, seed-major so that a partial sweep has one seed of every lever first."""
    unknown = [name for name in levers if name not in LEVERS]
    if unknown:
        raise SystemExit(f"unknown lever(s) {', '.join(unknown)}; known: {', '.join(LEVERS)}")
    return [Job(lever, seed) for seed in seeds for lever in levers]


def command(job: Job, runs: Path, erc_train: str, device: str, extra: list[str]) -> list[str]:
    """The `erc-train fit` call of a job: resume when its run folder holds a run, else a fresh fit."""
    run_dir = runs / job.version
    if (run_dir / "checkpoint.pt").is_file() or (run_dir / "config.json").is_file():
        return [erc_train, "fit", "--resume", str(run_dir)]
    return [
        erc_train, "fit", *BASE, "--device", device, "--seed", str(job.seed), "--store", str(runs / "store"),
        "--run-dir", str(run_dir), "--version", job.version, "--no-make-current", "--checkpoint-every-steps", "200",
        *LEVERS[job.lever], *extra,
    ]  # fmt: skip


def published(job: Job, runs: Path) -> bool:
    return (runs / "store" / job.version / "manifest.json").is_file()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=Path(os.environ.get("ERC_RUNS", "/root/erc-runs")) / "gpu-levers")
    ap.add_argument("--levers", default=",".join(LEVERS), help="comma-separated lever names")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--parallel", type=int, default=8, help="runs at once")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda (passed to every fit)")
    ap.add_argument("--extra", default="", help="more fit flags for every new run, e.g. a smaller budget to try it")
    ap.add_argument("--erc-train", default=str(Path(sys.executable).parent / "erc-train"))
    args = ap.parse_args(argv)
    if args.parallel < 1:
        ap.error("--parallel must be at least 1")
    jobs = plan([x for x in args.levers.split(",") if x], [int(s) for s in args.seeds.split(",") if s])
    args.runs.mkdir(parents=True, exist_ok=True)
    todo = [j for j in jobs if not published(j, args.runs)]
    print(f"{len(jobs)} runs, {len(jobs) - len(todo)} published, {len(todo)} to run, {args.parallel} at a time")
    running: dict[subprocess.Popen, tuple[Job, float]] = {}
    stopping = False

    def on_signal(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        for proc in running:  # each fit checkpoints at its next step and exits 75
            proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    failed = 0
    with open(args.runs / "commands.txt", "a", encoding="utf-8") as log:
        while todo or running:
            while todo and len(running) < args.parallel and not stopping:
                job = todo.pop(0)
                cmd = command(job, args.runs, args.erc_train, args.device, shlex.split(args.extra))
                log.write(f"== {time.strftime('%FT%TZ', time.gmtime())} {job.version}: {shlex.join(cmd)}\n")
                log.flush()
                out = open(args.runs / f"{job.version}.log", "a", encoding="utf-8")  # noqa: SIM115 (child owns it)
                running[subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)] = (job, time.monotonic())
                out.close()
            if stopping and not running:
                break
            time.sleep(1.0)
            for proc in [p for p in running if p.poll() is not None]:
                job, t0 = running.pop(proc)
                failed += proc.returncode not in (0, 75)
                log.write(f"   {job.version} rc={proc.returncode} wall_s={time.monotonic() - t0:.0f}\n")
                log.flush()
                print(f"{job.version}: rc={proc.returncode} ({time.monotonic() - t0:.0f} s)", flush=True)
            if stopping:
                todo.clear()
    left = [j.version for j in jobs if not published(j, args.runs)]
    print(f"published {len(jobs) - len(left)} of {len(jobs)}" + (f"; not yet: {', '.join(left)}" if left else ""))
    return 75 if stopping else (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
