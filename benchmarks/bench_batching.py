"""Batch-forming policy before/after: model time for the same MELD dev turns batched by the
previous MicroBatcher policy and by the current one, interleaved batch by batch so that a
changing machine load hits both alike.

Previous policy (erc_stream/batcher.py up to commit 0b2666a): form a batch by length
closeness alone, then drop every pick that would overtake an earlier waiting turn of its
conversation. Current policy: only the oldest waiting turn of each conversation competes,
and taking it lets the conversation's next turn compete (``form_batch(..., keys=...)``).

Saturated worker: all turns wait, replayed ``--lanes`` conversations at a time as in
bench_stream.py. Writes docs/benchmarks/bench_batching.{json,md}.
Usage: ``.venv/bin/python benchmarks/bench_batching.py [--conversations 60]``.
"""

from __future__ import annotations

import argparse
from collections import deque
from pathlib import Path

import numpy as np
from _common import (
    DOCS_DIR,
    command_line,
    encoder_flops_per_token,
    encoder_shape,
    machine_info,
    machine_md,
    md_table,
    meld_dev_examples,
    resolve_model,
    write_results,
)
from bench_stream import replay_order


def previous_policy(
    lengths: list[int], keys: list, max_size: int, max_tokens: int, pool_factor: int = 4
) -> list[list[int]]:
    """Batches (index lists) from the previous MicroBatcher.take, reproduced for comparison."""
    items = deque(range(len(lengths)))
    out = []
    while items:
        pool = [items[i] for i in range(min(max_size * pool_factor, len(items)))]
        anchor = lengths[pool[0]]
        order = sorted(range(1, len(pool)), key=lambda j: (abs(lengths[pool[j]] - anchor), j))
        chosen, longest = [0], anchor
        for j in order:
            if len(chosen) >= max_size:
                break
            new_longest = max(longest, lengths[pool[j]])
            if new_longest * (len(chosen) + 1) > max_tokens:
                continue
            chosen.append(j)
            longest = new_longest
        picked, held_back = set(chosen), set()
        for j, idx in enumerate(pool):
            if j in picked and keys[idx] in held_back:
                picked.discard(j)
            elif j not in picked:
                held_back.add(keys[idx])
        out.append([pool[j] for j in sorted(picked)])
        rest = [pool[j] for j in range(len(pool)) if j not in picked]
        for _ in range(len(pool)):
            items.popleft()
        items.extendleft(reversed(rest))
    return out


def current_policy(lengths: list[int], keys: list, max_size: int, max_tokens: int) -> list[list[int]]:
    from erc_stream.batcher import MicroBatcher

    mb: MicroBatcher[int] = MicroBatcher(max_size, max_tokens, 0.0)
    for i, n in enumerate(lengths):
        mb.add(i, n, key=keys[i])
    out = []
    while len(mb):
        out.append(mb.take())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=None)
    ap.add_argument("--conversations", type=int, default=60)
    ap.add_argument("--lanes", type=int, default=32)
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-batch-tokens", type=int, default=8192)
    ap.add_argument("--out-dir", type=Path, default=DOCS_DIR)
    ap.add_argument("--name", default="bench_batching")
    a = ap.parse_args()

    from erc_stream.model import Predictor

    info = machine_info()
    version_dir = resolve_model(a.store)
    p = Predictor.load(version_dir, device="cpu", dtype="fp32")
    p.warm_up(8)
    examples, convs = meld_dev_examples(p.builder, p.labels, a.conversations)
    starts = np.cumsum([0] + [len(c.utterances) for c in convs])
    order = replay_order(convs, a.lanes)
    prompts = [examples[starts[ci] + ti][0] for ci, ti in order]
    keys = [ci for ci, _ in order]
    lengths = [len(x) for x in prompts]
    policies = {
        "previous": previous_policy(lengths, keys, a.max_batch_size, a.max_batch_tokens),
        "current": current_policy(lengths, keys, a.max_batch_size, a.max_batch_tokens),
    }
    for name, batches in policies.items():  # both must keep per-conversation order
        seen: dict = {}
        for b in batches:
            for i in b:
                assert seen.get(keys[i], -1) < i, f"{name} policy reorders a conversation"
                seen[keys[i]] = i
    model_s = {k: 0.0 for k in policies}
    longest = max(len(b) for b in policies.values())
    for j in range(longest):  # interleave: batch j of each policy, back to back
        for name, batches in policies.items():
            if j < len(batches):
                model_s[name] += p.predict([prompts[i] for i in batches[j]]).seconds
    rows, res = [], {}
    shape = encoder_shape(version_dir)
    useful = sum(n * encoder_flops_per_token(n, shape) for n in lengths)
    for name, batches in policies.items():
        padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        flops = sum(
            len(b) * max(lengths[i] for i in b) * encoder_flops_per_token(max(lengths[i] for i in b), shape)
            for b in batches
        )
        res[name] = {
            "batches": len(batches),
            "mean_batch": len(prompts) / len(batches),
            "padding_fraction": 1 - sum(lengths) / padded,
            "flops_over_unpadded": flops / useful,
            "model_s": model_s[name],
            "utt_per_s": len(prompts) / model_s[name],
        }
        r = res[name]
        rows.append(
            [
                name,
                r["batches"],
                r["mean_batch"],
                f"{r['padding_fraction']:.1%}",
                r["flops_over_unpadded"],
                r["model_s"],
                r["utt_per_s"],
            ]
        )
    payload = {
        "command": command_line(),
        "machine": info,
        "model": version_dir.name,
        "turns": len(prompts),
        "conversations": len(convs),
        "lanes": a.lanes,
        "max_batch_size": a.max_batch_size,
        "max_batch_tokens": a.max_batch_tokens,
        "results": res,
        "machine_end": machine_info(),
    }
    gain = res["current"]["utt_per_s"] / res["previous"]["utt_per_s"]
    md = "\n".join(
        [
            "# Batch-forming policy: previous vs current",
            "",
            f"Command: `{payload['command']}`",
            "",
            machine_md(info, payload["machine_end"]),
            "",
            f"{len(prompts)} MELD dev turns of {len(convs)} conversations, {a.lanes} conversations interleaved, all "
            "waiting "
            f"(saturated worker), max_batch_size {a.max_batch_size}, max_batch_tokens {a.max_batch_tokens}, pool 4 "
            "x batch "
            f"size; model `{version_dir.name}` fp32. Batches of the two policies run interleaved in one process.",
            "",
            md_table(
                ["policy", "batches", "mean batch", "padding", "FLOPs / unpadded FLOPs", "model s", "utt/s"], rows
            ),
            "",
            f"Current / previous throughput: **{gain:.2f}x**.",
            "",
        ]
    )
    write_results(a.name, payload, md, a.out_dir)


if __name__ == "__main__":
    main()
