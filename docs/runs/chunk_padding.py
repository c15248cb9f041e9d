"""Would a CPU worker go faster if it split each batch by length before the forward pass?

Written in session 32. `bench_stream.py` on the served MELD model found a batch-1 consumer as fast
as the batching worker on a 2-core AVX2 CPU (5.1 against 4.9 events/s), with 28% of the worker's
padded tokens being padding. This script forms the worker's batches for the first N MELD dev
conversations in replay order (the saturated case, as `bench_model.py` does), then runs every batch
under each policy, interleaved batch by batch with the policies' order rotated, and prints model
seconds and padding per policy:

- ``whole``: the batch as the worker runs it (one forward, padded to its longest prompt);
- ``chunkC``: the batch sorted by length and cut into chunks of C prompts, one forward each.

Model seconds are `Predictions.seconds` summed (padding, forward, softmax, copy). Run it alone.

    PYTHONPATH=.:benchmarks .venv/bin/python docs/runs/chunk_padding.py --conversations 40 --chunks 8,16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine_info, meld_dev_examples, resolve_model  # noqa: E402
from bench_model import _batches_like_worker  # noqa: E402
from bench_stream import replay_order  # noqa: E402

from erc_stream.model import Predictor  # noqa: E402


def padded(lengths: list[int]) -> int:
    return max(lengths) * len(lengths)


def chunks_of(batch: list[int], lengths: list[int], size: int | None) -> list[list[int]]:
    if size is None:
        return [batch]
    ordered = sorted(batch, key=lambda i: lengths[i])
    return [ordered[k : k + size] for k in range(0, len(ordered), size)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=ROOT / "models")
    ap.add_argument("--conversations", type=int, default=40)
    ap.add_argument("--chunks", default="8,16")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lanes", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()

    version_dir = resolve_model(a.store)
    p = Predictor.load(version_dir, device="cpu", dtype="auto")
    examples, convs = meld_dev_examples(p.builder, p.labels, a.conversations)
    order = replay_order(convs, a.lanes)
    starts = [sum(len(c.utterances) for c in convs[:ci]) for ci in range(len(convs))]
    prompts = [examples[starts[ci] + ti][0] for ci, ti in order]
    lengths = [len(x) for x in prompts]
    batches = _batches_like_worker(lengths, a.batch_size, [ci for ci, _ in order])
    policies: list[tuple[str, int | None]] = [("whole", None)] + [
        (f"chunk{c}", int(c)) for c in a.chunks.split(",")
    ]
    p.warm_up(8)
    seconds = {name: 0.0 for name, _ in policies}
    tokens = {name: 0 for name, _ in policies}
    real = sum(lengths)
    for r in range(a.rounds):
        for bi, batch in enumerate(batches):
            k = (bi + r) % len(policies)
            for name, size in policies[k:] + policies[:k]:  # rotated: no policy always runs first
                for chunk in chunks_of(batch, lengths, size):
                    seconds[name] += p.predict([prompts[i] for i in chunk]).seconds
                    if r == 0:
                        tokens[name] += padded([lengths[i] for i in chunk])
    info = machine_info()
    print(f"model {version_dir.name}, dtype {p.dtype}; {len(prompts)} prompts in {len(batches)} worker batches "
          f"(max {a.batch_size}); {a.rounds} rounds; {info.get('cpu_model', '')}, git {info.get('git', '')}")
    print()
    print("| policy | model s (all rounds) | prompts/s | vs whole | padding share |")
    print("|---|---:|---:|---:|---:|")
    n = len(prompts) * a.rounds
    for name, _ in policies:
        print(
            f"| {name} | {seconds[name]:.1f} | {n / seconds[name]:.2f} | {seconds['whole'] / seconds[name]:.2f}x "
            f"| {1 - real / tokens[name]:.1%} |"
        )


if __name__ == "__main__":
    main()
