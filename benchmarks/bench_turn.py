"""Window against turn-once architecture, same encoder, one run, one machine.

Both models are the packaged all-MiniLM-L6-v2 with the training defaults (5 context turns,
max_length 256); the turn model adds the default context transformer (2 layers, encoder
width). Speed does not depend on trained weights, so untrained versions are published once
into var/bench/store unless --window-dir/--turn-dir name trained ones.

(a) tokens per turn on MELD dev: the window prompt (last k turns + template) against the
    single-turn prompt (``PromptBuilder.build_turn``) that a turn model encodes once;
(b) model path, utterances/s on MELD dev in fp32, the way a saturated worker runs it:
    window: ``Predictor.predict`` on batches from the worker's MicroBatcher;
    turn: for each batch of the next ``--batch-size`` arriving turns, ``TurnPredictor.encode``
    of those turns only, then one ``predict_windows`` over windows read from the vectors
    already cached (each turn encoded once, as in the worker);
(c) training samples/s: the trainer's own stage-1 step (``trainer.train._train_step``: encoder
    on the batch and on the anchor descriptions, SupCon + angle + CE, backward, clip, AdamW) on
    MELD train, window batches of ``--train-batch-size`` prompts against turn batches of whole
    conversations with at most that many turns; the first step of each is a warm-up.

(d) the worker, ``erc-stream worker`` as a subprocess on the local broker (bench_stream.py's
    replay, sink and points): MELD dev replayed as fast as possible (events/s), then at 50% of
    that rate (p50/p99 latency, record timestamp -> event read); each model served from its own
    store, the same settings (max_batch_size 32, max_wait_ms 20, fp32).

Writes docs/benchmarks/bench_turn.{json,md}. Usage:
``.venv/bin/python benchmarks/bench_turn.py [--quick]``.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (
    BENCH_STORE,
    DOCS_DIR,
    command_line,
    machine_info,
    machine_md,
    md_table,
    publish_bench_model,
    resolve_model,
    write_results,
)


def tokens_per_turn(window, turn, convs) -> dict:
    from trainer.evaluate import build_examples
    from trainer.turn import TurnData

    label_id = {label: i for i, label in enumerate(window.labels)}
    window_len = [len(p) for p, _ in build_examples(window.builder, convs, label_id)]
    turn_len = [len(p) for p in TurnData.build(turn.builder, convs, label_id).prompts]
    return {
        "window_mean": float(np.mean(window_len)),
        "window_p95": float(np.percentile(window_len, 95)),
        "turn_mean": float(np.mean(turn_len)),
        "turn_p95": float(np.percentile(turn_len, 95)),
        "ratio": float(np.mean(window_len) / np.mean(turn_len)),
        "utterances": len(turn_len),
    }


def window_model_path(window, convs, batch_size: int, budget_s: float) -> dict:
    from erc_stream.batcher import MicroBatcher
    from erc_stream.config import WorkerConfig
    from trainer.evaluate import build_examples

    examples = build_examples(window.builder, convs, {label: i for i, label in enumerate(window.labels)})
    keys = [c.id for c in convs for _ in c.utterances]
    mb: MicroBatcher[int] = MicroBatcher(batch_size, WorkerConfig().max_batch_tokens, 0.0)
    for i, (p, _) in enumerate(examples):
        mb.add(i, len(p), key=keys[i])
    batches = []
    while len(mb):
        batches.append(mb.take())
    window.predict([examples[i][0] for i in batches[0]])  # warm-up
    n, seconds, t0 = 0, 0.0, time.perf_counter()
    for b in batches:
        seconds += window.predict([examples[i][0] for i in b]).seconds
        n += len(b)
        if time.perf_counter() - t0 > budget_s:
            break
    return {"utterances": n, "model_s": seconds, "utt_per_s": n / seconds, "batches": len(batches)}


def turn_model_path(turn, convs, batch_size: int, budget_s: float) -> dict:
    """Turns arrive conversation by conversation; each batch encodes only its own turns and reads
    every window from the vectors cached so far (earlier batches and this one)."""
    from erc_stream.context import pack_windows, same_speaker_flags
    from trainer.turn import TurnData

    data = TurnData.build(turn.builder, convs, {label: i for i, label in enumerate(turn.labels)})
    conv_of = [ci for ci, n in enumerate(data.lengths) for _ in range(n)]
    k = turn.builder.context_turns
    turn.encode(data.prompts[:batch_size])  # warm-up
    cache: dict[int, torch.Tensor] = {}
    n, enc_s, ctx_s, t0 = 0, 0.0, 0.0, time.perf_counter()
    for start in range(0, len(data), batch_size):
        rows = list(range(start, min(start + batch_size, len(data))))
        t1 = time.perf_counter()
        vectors = turn.encode([data.prompts[i] for i in rows], batch_size=batch_size)  # (b, H)
        enc_s += time.perf_counter() - t1
        for i, v in zip(rows, vectors, strict=True):
            cache[i] = v
        windows, flags = [], []
        for i in rows:
            first = max(data.firsts[conv_of[i]], i - k)
            windows.append(torch.stack([cache[j] for j in range(first, i + 1)]))  # (w, H) oldest first
            flags.append(same_speaker_flags(data.speakers[first : i + 1]))
        t2 = time.perf_counter()
        pred = turn.predict_windows(pack_windows(windows, flags))
        ctx_s += time.perf_counter() - t2
        n += len(pred)
        if time.perf_counter() - t0 > budget_s:
            break
    seconds = enc_s + ctx_s
    return {"utterances": n, "model_s": seconds, "encode_s": enc_s, "context_s": ctx_s, "utt_per_s": n / seconds}


def training_samples_per_s(architecture: str, batch_size: int, steps: int, budget_s: float, tmp: Path) -> dict:
    """Time the trainer's own stage-1 step on MELD train (fp32, CPU)."""
    from trainer.config import TrainConfig
    from trainer.distributed import distributed, shard_batch
    from trainer.train import _length_sorted_batches, _optimizer, _prepare, _train_step

    cfg = TrainConfig(
        architecture=architecture,
        batch_size=batch_size,
        device="cpu",
        dtype="fp32",
        max_dev_conversations=1,
        store=tmp / "store",
        run_dir=tmp / f"run-{architecture}",
        version=f"bench-{architecture}",
    )
    with distributed("cpu") as ctx:
        run = _prepare(cfg, ctx, resume=False)
        optim = _optimizer(run)
        rng = random.Random(cfg.seed)
        if run.turn is not None:
            batches = run.turn.train.batches(batch_size, rng)
        else:
            batches = _length_sorted_batches([len(p) for p, _ in run.train_ex], batch_size, rng)
        run.model.train()
        run.anchor_enc.train()
        times, samples = [], 0
        t_start = time.perf_counter()
        for k, b in enumerate(batches[: steps + 1]):
            t0 = time.perf_counter()
            _train_step(run, optim, shard_batch(b, 0, 1))
            dt = time.perf_counter() - t0
            print(f"  {architecture} step {k}{' (warm-up)' if k == 0 else ''}: {dt:.2f} s", flush=True)
            if k > 0:
                times.append(dt)
                samples += run.utterances(b)
            if k >= 2 and time.perf_counter() - t_start > budget_s:
                break
    return {
        "steps": len(times),
        "samples": samples,
        "seconds": sum(times),
        "samples_per_s": samples / sum(times),
        "mean_batch_utterances": samples / len(times),
    }


async def worker_points(version_dir: Path, label: str, convs, a: argparse.Namespace) -> dict:
    """Max-rate and 50%-load points of ``erc-stream worker`` serving ``version_dir`` (its own store)."""
    import shutil

    from aiokafka import AIOKafkaProducer
    from bench_stream import (
        BIN,
        LOG_DIR,
        Proc,
        Sink,
        _http_get,
        child_env,
        messages,
        replay_order,
        run_point,
        wait_until,
    )

    from erc_stream.artifact import set_current
    from erc_stream.devtools.broker import LocalBroker, acreate_topics, free_port

    store = LOG_DIR / "turn-cmp" / label
    if not (store / version_dir.name).is_dir():
        store.mkdir(parents=True, exist_ok=True)
        shutil.copytree(version_dir, store / version_dir.name)
    set_current(store, version_dir.name)
    order = replay_order(convs, a.lanes)
    broker = LocalBroker(log_path=LOG_DIR / f"broker-{label}.log")
    broker.start()
    worker = sink = prod = None
    try:
        topics = {f"{label}.turns": a.partitions, f"{label}.emotions": a.partitions, f"{label}.dlq": 1}
        await acreate_topics(broker.bootstrap, topics)
        sink = Sink(broker.bootstrap, [f"{label}.emotions"], [f"{label}.dlq"])
        await sink.start()
        prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=2)
        await prod.start()
        port = free_port()
        env = {
            "ERC_BOOTSTRAP_SERVERS": broker.bootstrap,
            "ERC_INPUT_TOPIC": f"{label}.turns",
            "ERC_OUTPUT_TOPIC": f"{label}.emotions",
            "ERC_DLQ_TOPIC": f"{label}.dlq",
            "ERC_GROUP_ID": f"bench-{label}",
            "ERC_MODEL_STORE": store,
            "ERC_DTYPE": "fp32",
            "ERC_METRICS_HOST": "127.0.0.1",
            "ERC_METRICS_PORT": port,
            "ERC_MAX_BATCH_SIZE": a.batch_size,
            "ERC_MAX_WAIT_MS": 20,
            "ERC_SESSION_TIMEOUT_MS": 2000,
            "ERC_HEARTBEAT_INTERVAL_MS": 300,
        }
        worker = Proc(f"worker-{label}", [str(BIN / "erc-stream"), "worker"], child_env(env))
        await wait_until(lambda: _http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 180, "worker ready", worker)
        procs, topic = {"worker": worker}, f"{label}.turns"
        warm = messages(convs, order[: min(len(order), 64)], "warm")
        await run_point("warm", prod, sink, topic, warm, None, procs, a.point_timeout_s, port)
        mx = await run_point("max", prod, sink, topic, messages(convs, order, "max"), None, procs, 600, port)
        rate = 0.5 * mx["events_per_s"]
        n = min(len(order), max(20, int(rate * a.rate_duration_s)))
        half = await run_point(
            "rate50", prod, sink, topic, messages(convs, order[:n], "rate50"), rate, procs, a.point_timeout_s, port
        )
        return {"max": mx, "rate50": half}
    finally:
        if worker is not None:
            worker.stop()
        if prod is not None:
            await prod.stop()
        if sink is not None:
            await sink.stop()
        broker.stop()


def worker_md(worker: dict) -> str:
    if not worker:
        return "Worker points not run (--no-worker)."
    rows = []
    for arch in ("window", "turn"):
        mx, half = worker[arch]["max"], worker[arch]["rate50"]
        lat = half["latency_ms"]
        rows.append(
            [arch, mx["events_per_s"], half["offered_rate"], lat.get(50, float("nan")), lat.get(99, float("nan"))]
        )
    ratio = worker["turn"]["max"]["events_per_s"] / worker["window"]["max"]["events_per_s"]
    table = md_table(["worker", "events/s at max rate", "50% load (events/s)", "p50 ms", "p99 ms"], rows)
    return f"{table}\n\nTurn / window worker events/s at max rate: {ratio:.2f}x."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window-dir", type=Path, default=None, help="a published window version (default: untrained)")
    ap.add_argument("--turn-dir", type=Path, default=None, help="a published turn version (default: untrained)")
    ap.add_argument("--batch-size", type=int, default=32, help="model-path batch size (the worker's default)")
    ap.add_argument("--train-batch-size", type=int, default=16)
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=120.0, help="per measurement")
    ap.add_argument("--conversations", type=int, default=None, help="first N MELD dev conversations")
    ap.add_argument("--no-worker", action="store_true", help="skip the worker points (d)")
    ap.add_argument("--lanes", type=int, default=32, help="worker points: conversations replayed concurrently")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--rate-duration-s", type=float, default=30.0, help="seconds of offered load at 50%%")
    ap.add_argument("--point-timeout-s", type=float, default=300.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out-dir", type=Path, default=DOCS_DIR)
    ap.add_argument("--name", default="bench_turn")
    a = ap.parse_args()
    if a.quick:
        a.conversations, a.train_steps, a.budget_s, a.rate_duration_s = a.conversations or 20, 2, 20.0, 5.0

    import tempfile

    from erc_stream.artifact import read_current
    from erc_stream.model import Predictor, TurnPredictor, load_predictor
    from trainer.datasets import load_split

    torch.manual_seed(0)
    info = machine_info()
    # The untrained window model of benchmarks/_common.py (CURRENT of var/bench/store): the same encoder.
    window_dir = a.window_dir or (
        resolve_model(BENCH_STORE) if read_current(BENCH_STORE) else publish_bench_model(BENCH_STORE)
    )
    turn_dir = a.turn_dir or publish_bench_model(BENCH_STORE, "turn")
    window = load_predictor(window_dir, device="cpu", dtype="fp32")
    turn = load_predictor(turn_dir, device="cpu", dtype="fp32")
    assert isinstance(window, Predictor) and isinstance(turn, TurnPredictor)
    convs = load_split("meld", "dev")[: a.conversations]
    print(f"window {window_dir.name}, turn {turn_dir.name}; {sum(len(c.utterances) for c in convs)} dev turns")

    tokens = tokens_per_turn(window, turn, convs)
    print(f"tokens per turn: window {tokens['window_mean']:.1f}, turn {tokens['turn_mean']:.1f}", flush=True)
    model_path = {
        "window": window_model_path(window, convs, a.batch_size, a.budget_s),
        "turn": turn_model_path(turn, convs, a.batch_size, a.budget_s),
    }
    for arch, r in model_path.items():
        print(f"model path {arch}: {r['utt_per_s']:.1f} utt/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        training = {
            arch: training_samples_per_s(arch, a.train_batch_size, a.train_steps, a.budget_s, Path(tmp))
            for arch in ("window", "turn")
        }
    worker = {}
    if not a.no_worker:
        import asyncio

        for arch, vdir in (("window", window_dir), ("turn", turn_dir)):
            print(f"worker points, {arch}", flush=True)
            worker[arch] = asyncio.run(worker_points(vdir, arch, convs, a))
    payload: dict[str, Any] = {
        "command": command_line(),
        "machine": info,
        "models": {"window": str(window_dir), "turn": str(turn_dir)},
        "tokens_per_turn": tokens,
        "model_path_fp32": model_path,
        "training_fp32": training,
        "worker_fp32": worker,
        "machine_end": machine_info(),
    }
    speedup = model_path["turn"]["utt_per_s"] / model_path["window"]["utt_per_s"]
    train_speedup = training["turn"]["samples_per_s"] / training["window"]["samples_per_s"]
    lines = [
        "# Window against turn-once architecture (same encoder)",
        "",
        f"Command: `{payload['command']}`",
        "",
        machine_md(info, payload["machine_end"]),
        "",
        f"Models: window `{window_dir.name}`, turn `{turn_dir.name}` (all-MiniLM-L6-v2, 5 context turns, "
        f"max_length 256; turn: 2-layer context transformer). MELD dev, {tokens['utterances']} utterances.",
        "",
        md_table(
            ["", "window", "turn", "turn / window"],
            [
                ["tokens per turn (mean)", tokens["window_mean"], tokens["turn_mean"], 1 / tokens["ratio"]],
                ["tokens per turn (p95)", tokens["window_p95"], tokens["turn_p95"], ""],
                [
                    f"model path utt/s (fp32, batch {a.batch_size})",
                    model_path["window"]["utt_per_s"],
                    model_path["turn"]["utt_per_s"],
                    speedup,
                ],
                [
                    f"training samples/s (fp32, batch {a.train_batch_size})",
                    training["window"]["samples_per_s"],
                    training["turn"]["samples_per_s"],
                    train_speedup,
                ],
            ],
        ),
        "",
        worker_md(worker),
        "",
        f"Turn model path split: encoder {model_path['turn']['encode_s']:.2f} s, context pass "
        f"{model_path['turn']['context_s']:.2f} s over {model_path['turn']['utterances']} turns. "
        "A training step of either architecture also runs the encoder over the 7 anchor descriptions "
        "(EACL's anchors from the live encoder), a fixed cost that the turn model's short prompts do not shrink.",
    ]
    write_results(a.name, payload, "\n".join(lines), a.out_dir)


if __name__ == "__main__":
    main()
