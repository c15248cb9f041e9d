"""Streaming benchmark: the real worker through the local broker on MELD dev, against a
naive one-message-at-a-time consumer, in one run with the same model and data.

What runs where:

- this process: the local broker (a child process), the replay producer and a separate
  latency consumer that reads the output topics (both aiokafka, one event loop);
- ``erc-stream worker`` as a subprocess (defaults: max_batch_size 32, max_wait_ms 20,
  dtype auto), its metrics scraped from its own /metrics before and after each point;
- the naive baseline as a subprocess (``bench_stream.py --naive ...``): getone, parse,
  the same PromptBuilder (turns tokenized once, as the worker does), ``Predictor.predict``
  on one prompt in fp32, produce and await the ack, commit, next message.

Points: a warm-up, then MELD dev replayed as fast as possible (sustained events/s), then
fixed offered rates at 25/50/75% of that maximum (open loop: each record's timestamp is
its scheduled send time, so a producer that falls behind is counted as latency), then the
naive consumer as fast as it goes on the max point's turns (``--naive-turns``: fewer).
Latency is record timestamp -> event read by the latency consumer. Conversations are
replayed concurrently (``--lanes`` at a time, each conversation's turns in order) with a
fresh conversation-id prefix per point.

Before the streaming points and again after them the model path itself (``Predictor.predict``
on the max point's prompts in batches from the worker's MicroBatcher at the worker's
max_batch_size) is timed in this process, so the worker's share of it is measured on the same
prompts under the same conditions (``--reference-budget-s`` cuts it short, and the report
says how many it ran); with ``--naive-turns``, also on the naive consumer's prompts.

Writes docs/benchmarks/bench_stream.{json,md} and bench_stream_latency.png.
Usage: ``make bench-stream`` or ``.venv/bin/python benchmarks/bench_stream.py [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from _common import (
    DOCS_DIR,
    ROOT,
    command_line,
    machine_info,
    machine_md,
    md_table,
    meld_dev_examples,
    resolve_model,
    write_results,
)

from erc_stream.metrics import ModelPathTotals

BIN = Path(sys.executable).parent
LOG_DIR = ROOT / "var" / "bench"


# ---------------------------------------------------------------------------------- data
def replay_order(convs, lanes: int) -> list[tuple[int, int]]:
    """(conversation index, turn index) in replay order: ``lanes`` conversations at a time,
    round-robin between them, a finished conversation's lane taken by the next one. Every
    prefix therefore holds whole conversations' early turns in realistic proportions."""
    order: list[tuple[int, int]] = []
    active: list[list[int]] = []  # [conversation index, next turn]
    nxt = 0
    while active or nxt < len(convs):
        while len(active) < lanes and nxt < len(convs):
            active.append([nxt, 0])
            nxt += 1
        still = []
        for a in active:
            order.append((a[0], a[1]))
            a[1] += 1
            if a[1] < len(convs[a[0]].utterances):
                still.append(a)
        active = still
    return order


def messages(convs, order, prefix: str) -> list[tuple[bytes, bytes]]:
    """(key, value) records of the turns topic for one point; conversation ids get ``prefix``."""
    out = []
    for ci, ti in order:
        conv = convs[ci]
        u = conv.utterances[ti]
        cid = f"{prefix}/{conv.id}"
        out.append(
            (cid.encode(), orjson.dumps({"conversation_id": cid, "turn_id": ti, "speaker": u.speaker, "text": u.text}))
        )
    return out


# ---------------------------------------------------------------------------------- sink
@dataclass
class PointLog:
    expected: int
    sent_first_s: float = 0.0
    sent_last_s: float = 0.0
    producer_behind_max_s: float = 0.0
    read_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    dead_letters: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Sink:
    """The separate consumer: reads output and DLQ topics, files each record under its point."""

    def __init__(self, bootstrap: str, output_topics: list[str], dlq_topics: list[str]) -> None:
        self.bootstrap = bootstrap
        self.outputs, self.dlqs = output_topics, dlq_topics
        self.points: dict[str, PointLog] = {}
        self._task: asyncio.Task | None = None
        self._consumer = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        self._consumer = AIOKafkaConsumer(
            *self.outputs,
            *self.dlqs,
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=10,
        )
        await self._consumer.start()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer:
            await self._consumer.stop()

    async def _run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            now = time.time()
            for tp, recs in batch.items():
                for rec in recs:
                    obj = orjson.loads(rec.value)
                    if tp.topic in self.dlqs:
                        self._dead_letter(obj)
                        continue
                    point = self.points.get(obj["conversation_id"].split("/", 1)[0])
                    if point is None:
                        continue
                    point.read_s.append(now)
                    point.latency_s.append(now - obj["record_ts_ms"] / 1000.0)
                    if len(point.read_s) + point.dead_letters >= point.expected:
                        point.done.set()

    def _dead_letter(self, obj: dict) -> None:
        # The DLQ keeps the original key (the conversation id, base64); it names the point.
        import base64

        if not obj.get("key_b64"):
            return
        cid = base64.b64decode(obj["key_b64"]).decode("utf-8", errors="replace")
        point = self.points.get(cid.split("/", 1)[0])
        if point is not None:
            point.dead_letters += 1
            if len(point.read_s) + point.dead_letters >= point.expected:
                point.done.set()


async def replay(producer, topic: str, msgs: list[tuple[bytes, bytes]], rate: float | None, log: PointLog) -> None:
    """Open-loop replay: record i is due at t0 + i/rate (all at once when rate is None) and is
    stamped with its due time, so a late producer shows up as latency, not as a lower rate."""
    t0 = time.time()
    log.sent_first_s = t0
    futs = []
    for i, (key, value) in enumerate(msgs):
        due = t0 + i / rate if rate else time.time()
        delay = due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            log.producer_behind_max_s = max(log.producer_behind_max_s, -delay)
        futs.append(await producer.send(topic, value=value, key=key, timestamp_ms=int(due * 1000)))
    await asyncio.gather(*futs)
    log.sent_last_s = time.time()


# ---------------------------------------------------------------------------------- worker
def _http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""
    except OSError:
        return 0, b""


def scrape(port: int) -> ModelPathTotals:
    """The worker's model-path totals (batches, model time, tokens), from its /metrics."""
    status, body = _http_get(f"http://127.0.0.1:{port}/metrics")
    if status != 200:
        raise RuntimeError(f"worker /metrics answered {status}")
    return ModelPathTotals.from_text(body.decode())


def metrics_delta(a: ModelPathTotals, b: ModelPathTotals) -> dict:
    """What the worker's model path did between two scrapes, as the point's JSON has it."""
    d = b - a
    return {
        "batches": d.batches,
        "mean_batch_size": d.mean_batch,
        "batch_size_hist": d.batch_size_hist,
        "inference_s": d.seconds,
        "tokens": d.real_tokens,
        "padding_fraction": d.padding_share,
    }


class Proc:
    """A child process (worker or naive consumer) with its log file and CPU accounting."""

    def __init__(self, name: str, argv: list[str], env: dict, cwd: Path = ROOT) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd)
        import psutil

        self.ps = psutil.Process(self.popen.pid)

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.log_path.stem} exited with {self.popen.returncode}; log tail:\n{tail}")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.terminate()  # SIGTERM: drain, flush, commit, exit
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode


def child_env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERC_") or k == "ERC_DATA_DIR"}
    env.update(
        {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


async def wait_until(pred, timeout_s: float, what: str, proc: Proc) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        proc.check_alive()
        if await asyncio.to_thread(pred):
            return
        await asyncio.sleep(0.3)
    raise TimeoutError(f"{what} not within {timeout_s:.0f} s; see {proc.log_path}")


# ---------------------------------------------------------------------------------- naive
async def naive_main(a: argparse.Namespace) -> None:
    """The baseline: one message at a time, fp32, per-message ack and commit."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    from erc_stream.events import BadInput, SourceRef, emotion_event, parse_turn
    from erc_stream.model import Predictor

    predictor = Predictor.load(Path(a.version_dir), device="cpu", dtype="fp32")
    predictor.warm_up(1)
    builder, labels = predictor.builder, predictor.labels
    k = builder.context_turns
    windows: dict[str, list] = {}  # conversation -> last k encoded turns
    producer = AIOKafkaProducer(bootstrap_servers=a.bootstrap, acks="all")
    consumer = AIOKafkaConsumer(
        a.input_topic,
        bootstrap_servers=a.bootstrap,
        group_id=a.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=2000,
        heartbeat_interval_ms=300,
    )
    await producer.start()
    await consumer.start()
    while not consumer.assignment():
        await asyncio.sleep(0.05)
    Path(a.ready_file).write_text("ready")
    try:
        while True:
            rec = await consumer.getone()
            try:
                turn = parse_turn(rec.value, rec.key)
            except BadInput:
                await consumer.commit({TopicPartition(rec.topic, rec.partition): OffsetAndMetadata(rec.offset + 1, "")})
                continue
            current = builder.encode_turn(turn.speaker, turn.text)
            window = windows.setdefault(turn.conversation_id, [])
            prompt = builder.build(window, current)
            window.append(current)
            del window[: -k or len(window)]
            pred = predictor.predict([prompt])
            lid = int(pred.label_ids[0])
            now = time.time()
            value = emotion_event(
                turn,
                emotion=labels[lid],
                confidence=float(pred.confidence[0, lid]),
                scores={labels[j]: round(float(pred.scores[0, j]), 6) for j in range(len(labels))},
                model_version=predictor.version,
                context_turns=prompt.context_used,
                source=SourceRef(rec.topic, rec.partition, rec.offset),
                record_ts_ms=rec.timestamp,
                produced_at=now,
                latency_ms=max(0.0, now * 1000 - rec.timestamp),
            )
            await (await producer.send(a.output_topic, value=value, key=rec.key))
            await consumer.commit({TopicPartition(rec.topic, rec.partition): OffsetAndMetadata(rec.offset + 1, "")})
    finally:
        await consumer.stop()
        await producer.stop()


# ---------------------------------------------------------------------------------- profile
# Where the worker's CPU goes: each sampled stack (root -> leaf) is filed under the first
# rule that matches, checked in this order (the model forward is matched first, so the
# tokenizer or JSON inside it is not counted twice).
_PROFILE_RULES: tuple[
    tuple[str, tuple[tuple[str | None, str], ...]], ...
] = (  # (category, ((function, file part), ...))
    ("model: pad_batch (building padded tensors)", (("pad_batch", "erc_stream/prompt.py"),)),
    ("model: encoder forward + head (torch)", (("predict", "erc_stream/model.py"),)),
    ("prompt: tokenization (encode_turns)", (("encode_turns", "erc_stream/prompt.py"),)),
    ("prompt: build from cached ids", (("build", "erc_stream/prompt.py"),)),
    ("input: JSON parse + validation (parse_turn)", (("parse_turn", "erc_stream/events.py"),)),
    ("output: event JSON (emotion_event)", (("emotion_event", "erc_stream/events.py"),)),
    (
        "output: event building other (scores dict, metrics)",
        (("_event", "erc_stream/worker.py"), ("_observe_batch", "erc_stream/worker.py")),
    ),
    ("batcher (form_batch/take)", ((None, "erc_stream/batcher.py"),)),
    ("window store", ((None, "erc_stream/window.py"),)),
    ("metrics (prometheus_client)", ((None, "prometheus_client/"),)),
    ("kafka client (aiokafka: fetch, send, commit)", ((None, "aiokafka/"),)),
    (
        "worker loop other (intake, acks, offsets)",
        ((None, "erc_stream/worker.py"), (None, "erc_stream/emit.py"), (None, "erc_stream/offsets.py")),
    ),
    (
        "asyncio / threads machinery",
        ((None, "asyncio/"), (None, "concurrent/futures"), (None, "threading.py"), (None, "selectors.py")),
    ),
)


def _frames(stack: str) -> list[tuple[str, str]]:
    out = []
    for frame in stack.split(";"):
        func, _, rest = frame.partition(" (")
        out.append((func.strip(), rest.rsplit(":", 1)[0]))
    return out


def summarize_profile(path: Path) -> dict:
    """Shares of the sampled (busy) stacks per category, from py-spy's raw (collapsed) output."""
    counts: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = _frames(stack)
        total += int(n)
        cat = next(
            (
                name
                for name, pats in _PROFILE_RULES
                if any(
                    (fn is None or f.rsplit(".", 1)[-1] == fn) and part in file
                    for fn, part in pats
                    for f, file in frames
                )
            ),
            "other",
        )
        counts[cat] = counts.get(cat, 0) + int(n)
        leaf = "{} ({})".format(*frames[-1])
        leaves[leaf] = leaves.get(leaf, 0) + int(n)
    top = sorted(leaves.items(), key=lambda kv: -kv[1])[:10]
    return {
        "samples": total,
        "path": str(path.relative_to(ROOT)),
        "shares": {k: v / total for k, v in sorted(counts.items(), key=lambda kv: -kv[1])} if total else {},
        "top_leaf_frames": {k: v / total for k, v in top} if total else {},
    }


# ---------------------------------------------------------------------------------- driver
def summarize(name: str, log: PointLog, rate: float | None, cpu: dict, metrics: dict | None) -> dict:
    lat = np.array(log.latency_s) * 1000.0
    n = len(log.read_s)
    span = (max(log.read_s) - log.sent_first_s) if n else float("nan")
    return {
        "point": name,
        "offered_rate": rate,
        "sent": log.expected,
        "events": n,
        "dead_letters": log.dead_letters,
        "complete": n + log.dead_letters >= log.expected,
        "events_per_s": n / span if n else 0.0,
        "span_s": span,
        "producer_behind_max_s": log.producer_behind_max_s,
        "latency_ms": {q: float(np.percentile(lat, q)) for q in (50, 95, 99)} if n else {},
        "latency_max_ms": float(lat.max()) if n else None,
        "cpu": cpu,
        "worker_metrics": metrics,
    }


async def run_point(name, prod, sink, topic, msgs, rate, procs: dict, timeout_s, port=None) -> dict:
    import psutil

    me = psutil.Process()
    log = PointLog(expected=len(msgs))
    sink.points[name] = log
    before = scrape(port) if port else None
    cpu0 = {k: p.cpu_s() for k, p in procs.items()}
    self0 = sum(me.cpu_times()[:2])
    t0 = time.time()
    await replay(prod, topic, msgs, rate, log)
    try:
        await asyncio.wait_for(log.done.wait(), timeout_s)
    except TimeoutError:
        print(f"  {name}: timed out with {len(log.read_s)}/{log.expected} events", flush=True)
    wall = time.time() - t0
    cpu = {k: {"cpu_s": p.cpu_s() - cpu0[k], "cores": (p.cpu_s() - cpu0[k]) / wall} for k, p in procs.items()}
    self_cpu = sum(me.cpu_times()[:2]) - self0
    cpu["bench_process"] = {"cpu_s": self_cpu, "cores": self_cpu / wall}
    delta = metrics_delta(before, scrape(port)) if port else None
    if delta is not None:
        delta["model_busy_fraction"] = delta["inference_s"] / wall
    s = summarize(name, log, rate, cpu, delta)
    lat = s["latency_ms"]
    print(
        f"  {name}: {s['events']}/{s['sent']} events, {s['events_per_s']:.1f} ev/s, p50 "
        f"{lat.get(50, float('nan')):.0f} ms, "
        f"p99 {lat.get(99, float('nan')):.0f} ms" + (f", mean batch {delta['mean_batch_size']:.1f}" if delta else ""),
        flush=True,
    )
    return s


def model_path_reference(
    version_dir: Path, dtype: str, prompts, keys, batch_size: int, budget_s: float | None, max_forward: int | None
) -> dict:
    """Predictor.predict on the prompts a point replayed, batched by the worker's MicroBatcher, in
    this process. ``budget_s`` stops it early (after the batch that crosses it); the result says how
    many of the prompts it covered, since early turns (less context) are shorter and faster."""
    from bench_model import _batches_like_worker

    from erc_stream.model import Predictor

    p = Predictor.load(version_dir, device="cpu", dtype=dtype)
    p.warm_up(8)
    lengths = [len(x) for x in prompts]
    done, model_s, t0 = 0, 0.0, time.perf_counter()
    for b in _batches_like_worker(lengths, batch_size, keys):
        model_s += p.predict([prompts[i] for i in b], max_forward=max_forward).seconds
        done += len(b)
        if budget_s is not None and time.perf_counter() - t0 >= budget_s:
            break
    wall = time.perf_counter() - t0
    return {
        "dtype": str(p.dtype).replace("torch.", ""),
        "batch_size": batch_size,
        "max_forward": max_forward,
        "utterances": done,
        "prompts": len(prompts),
        "utt_per_s": done / model_s,
        "utt_per_s_wall": done / wall,
        "model_s": model_s,
    }


async def driver(a: argparse.Namespace) -> dict:
    from aiokafka import AIOKafkaProducer

    from erc_stream.devtools.broker import LocalBroker, acreate_topics, free_port
    from erc_stream.model import Predictor, resolve_dtype, resolve_max_forward

    info = machine_info()
    version_dir = resolve_model(a.store)
    probe = Predictor.load(version_dir, device="cpu", dtype="fp32")
    examples, convs = meld_dev_examples(probe.builder, probe.labels, a.conversations)
    worker_dtype = str(resolve_dtype(a.dtype, probe.device)).replace("torch.", "")
    max_forward = resolve_max_forward(a.max_forward_prompts, probe.device)  # what the worker will use
    order = replay_order(convs, a.lanes)
    ordered_prompts = [examples[sum(len(c.utterances) for c in convs[:ci]) + ti][0] for ci, ti in order]
    del probe
    print(
        f"model {version_dir.name}; {len(order)} MELD dev turns in {len(convs)} conversations; worker dtype "
        f"{worker_dtype}",
        flush=True,
    )

    keys = [ci for ci, _ in order]
    print("model path reference on the max point's prompts (in this process, nothing else running)", flush=True)
    ref = model_path_reference(
        version_dir, a.dtype, ordered_prompts, keys, a.max_batch_size, a.reference_budget_s, max_forward
    )
    print(
        f"  {ref['utt_per_s']:.1f} utt/s ({ref['utterances']} of {ref['prompts']} prompts, batch size "
        f"{a.max_batch_size})",
        flush=True,
    )

    broker = LocalBroker(log_path=LOG_DIR / "broker.log")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    broker.start()
    procs: list[Proc] = []
    sink = None
    prod = None
    try:
        topics = {
            "bench.turns": a.partitions,
            "bench.emotions": a.partitions,
            "bench.dlq": 1,
            "naive.turns": a.partitions,
            "naive.emotions": a.partitions,
            "naive.dlq": 1,
        }
        await acreate_topics(broker.bootstrap, topics)
        sink = Sink(broker.bootstrap, ["bench.emotions", "naive.emotions"], ["bench.dlq"])
        await sink.start()
        prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=2)
        await prod.start()

        port = free_port()
        worker = Proc(
            "worker",
            [str(BIN / "erc-stream"), "worker"],
            child_env(
                {
                    "ERC_BOOTSTRAP_SERVERS": broker.bootstrap,
                    "ERC_INPUT_TOPIC": "bench.turns",
                    "ERC_OUTPUT_TOPIC": "bench.emotions",
                    "ERC_DLQ_TOPIC": "bench.dlq",
                    "ERC_GROUP_ID": "bench-worker",
                    "ERC_MODEL_STORE": version_dir.parent,
                    "ERC_DTYPE": a.dtype,
                    "ERC_METRICS_HOST": "127.0.0.1",
                    "ERC_METRICS_PORT": port,
                    "ERC_MAX_BATCH_SIZE": a.max_batch_size,
                    "ERC_MAX_WAIT_MS": a.max_wait_ms,
                    **({"ERC_MAX_FORWARD_PROMPTS": a.max_forward_prompts} if a.max_forward_prompts is not None else {}),
                    "ERC_SESSION_TIMEOUT_MS": 2000,
                    "ERC_HEARTBEAT_INTERVAL_MS": 300,
                    "ERC_LOG_LEVEL": "INFO",
                    **({"PYTHONPATH": a.worker_src.resolve()} if a.worker_src else {}),
                }
            ),
            cwd=a.worker_src.resolve() if a.worker_src else ROOT,
        )
        procs.append(worker)
        await wait_until(lambda: _http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 180, "worker ready", worker)
        print("worker ready", flush=True)
        profile_path = LOG_DIR / f"{a.name}_worker_stacks.txt"
        if a.profile:  # sampled stacks of the busy worker (idle threads are not sampled)
            spy = subprocess.Popen(
                [
                    str(BIN / "py-spy"),
                    "record",
                    "--pid",
                    str(worker.popen.pid),
                    "--rate",
                    "100",
                    "--format",
                    "raw",
                    "-o",
                    str(profile_path),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
        wprocs = {"worker": worker}
        points = []
        warm = messages(convs, order[: min(len(order), 64)], "warm")
        await run_point("warm", prod, sink, "bench.turns", warm, None, wprocs, a.point_timeout_s, port)
        all_msgs = order
        mx = await run_point(
            "max", prod, sink, "bench.turns", messages(convs, all_msgs, "max"), None, wprocs, a.point_timeout_s, port
        )
        points.append(mx)
        max_rate = mx["events_per_s"]
        profile = None
        if a.profile:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            spy.wait(60)
            profile = summarize_profile(profile_path)
        for frac in a.fractions:
            rate = frac * max_rate
            n = min(len(order), max(20, int(rate * a.rate_duration_s)))
            name = f"rate{int(frac * 100)}"
            s = await run_point(
                name, prod, sink, "bench.turns", messages(convs, order[:n], name), rate, wprocs, a.point_timeout_s, port
            )
            s["fraction_of_max"] = frac
            points.append(s)
        rc = worker.stop()
        procs.remove(worker)
        print(f"worker stopped (exit {rc})", flush=True)

        ready = LOG_DIR / "naive.ready"
        ready.unlink(missing_ok=True)
        naive = Proc(
            "naive",
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--naive",
                "--bootstrap",
                broker.bootstrap,
                "--version-dir",
                str(version_dir),
                "--input-topic",
                "naive.turns",
                "--output-topic",
                "naive.emotions",
                "--group",
                "bench-naive",
                "--ready-file",
                str(ready),
            ],
            child_env({}),
        )
        procs.append(naive)
        await wait_until(ready.exists, 180, "naive consumer ready", naive)
        n_naive = len(order) if a.naive_turns is None else min(len(order), a.naive_turns)
        nv = await run_point(
            "naive",
            prod,
            sink,
            "naive.turns",
            messages(convs, order[:n_naive], "naive"),
            None,
            {"naive": naive},
            a.point_timeout_s,
        )
        naive.stop()
        procs.remove(naive)
    finally:
        for p in procs:
            p.stop()
        if prod:
            await prod.stop()
        if sink:
            await sink.stop()
        broker.stop()

    # After the broker is down: the references run in this event loop's thread for minutes, which
    # would starve the latency consumer's fetches.
    ref_naive = None  # the naive consumer ran fewer turns than the max point: the model path on those
    if n_naive < len(order):
        print("model path reference on the naive consumer's prompts", flush=True)
        ref_naive = model_path_reference(
            version_dir,
            a.dtype,
            ordered_prompts[:n_naive],
            keys[:n_naive],
            a.max_batch_size,
            a.reference_budget_s,
            max_forward,
        )
        print(f"  {ref_naive['utt_per_s']:.1f} utt/s ({ref_naive['utterances']} prompts)", flush=True)
    print("model path reference on the max point's prompts again (load may have changed)", flush=True)
    ref_after = model_path_reference(
        version_dir, a.dtype, ordered_prompts, keys, a.max_batch_size, a.reference_budget_s, max_forward
    )
    print(f"  {ref_after['utt_per_s']:.1f} utt/s ({ref_after['utterances']} prompts)", flush=True)

    return {
        "command": command_line(),
        "machine": info,
        "model": {"version": version_dir.name, "path": str(version_dir)},
        "worker_dtype": worker_dtype,
        "naive_dtype": "float32",
        "settings": {
            "lanes": a.lanes,
            "partitions": a.partitions,
            "max_batch_size": a.max_batch_size,
            "max_wait_ms": a.max_wait_ms,
            "max_forward_prompts": max_forward or 0,
            "rate_duration_s": a.rate_duration_s,
            "turns": len(order),
            "conversations": len(convs),
        },
        "model_path_reference": ref,
        "model_path_reference_after": ref_after,
        "model_path_reference_naive": ref_naive,
        "points": points,
        "naive": nv,
        "profile": profile,
        "worker_src": str(a.worker_src) if a.worker_src else None,
        "machine_end": machine_info(),
    }


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted((p for p in payload["points"] if p["events"]), key=lambda p: p["events_per_s"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    x = [p["events_per_s"] for p in pts]
    for q, style in ((50, "o-"), (95, "s--"), (99, "^:")):
        ax.plot(x, [p["latency_ms"][q] for p in pts], style, label=f"worker p{q}")
    for p in pts:
        ax.annotate(
            p["point"],
            (p["events_per_s"], p["latency_ms"][50]),
            textcoords="offset points",
            xytext=(4, -12),
            fontsize=7,
        )
    nv = payload["naive"]
    if nv["events"]:
        ax.plot([nv["events_per_s"]], [nv["latency_ms"][50]], "kx", ms=9, label="naive consumer p50 (max rate)")
    ax.set_yscale("log")
    ax.set_xlabel("sustained events/s")
    ax.set_ylabel("latency (ms): record timestamp -> event read", fontsize=8)
    ax.set_title(
        f"erc-stream worker on MELD dev ({payload['worker_dtype']}, {payload['machine']['logical_cpus']} CPUs)",
        fontsize=9,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _forward_setting(settings: dict) -> str:
    """The worker's prompts per forward pass, as the report names it (absent before the setting)."""
    n = settings.get("max_forward_prompts")
    if n is None:
        return "each batch in one forward pass (before max_forward_prompts)"
    return f"max_forward_prompts {n}" + (" (each batch in one pass)" if n == 0 else "")


def _reference_coverage(refs: list[dict], payload: dict) -> str:
    """Which prompts each model path reference ran (payloads before they said so: nothing)."""
    if not all("prompts" in r for r in refs):
        return ""
    covered = " and ".join(f"{r['utterances']}" for r in refs)
    out = f" The model path references ran {covered} of the max point's {refs[0]['prompts']} prompts"
    if any(r["utterances"] < r["prompts"] for r in refs):
        out += (
            " (cut short by `--reference-budget-s`: those are the replay's early turns, with less context and "
            "shorter prompts, so the reference rate is higher than over all of them and the worker's share lower)"
        )
    out += "."
    rn, nv = payload.get("model_path_reference_naive"), payload["naive"]
    if rn:
        out += (
            f" The naive consumer ran only the first {nv['sent']} turns (`--naive-turns`): its row is compared "
            f"with the model path on those, batched ({rn['utt_per_s']:.1f} utt/s over {rn['utterances']} of them), "
            "and *vs naive* compares unlike prompt sets."
        )
    return out


def render(payload: dict, png_name: str) -> str:
    def with_int_quantiles(point: dict) -> dict:  # a payload read back from JSON has "50", not 50
        return {**point, "latency_ms": {int(q): v for q, v in point["latency_ms"].items()}}

    points = [with_int_quantiles(p) for p in payload["points"]]  # copies: the payload is written as it is
    ref, nv = payload["model_path_reference"], with_int_quantiles(payload["naive"])
    mx = next(p for p in points if p["point"] == "max")
    st = payload["settings"]
    ratio_naive = mx["events_per_s"] / nv["events_per_s"] if nv["events_per_s"] else float("nan")
    refs = [ref] + ([payload["model_path_reference_after"]] if payload.get("model_path_reference_after") else [])
    ref_rate = sum(r["utt_per_s"] for r in refs) / len(refs)
    ratio_model = mx["events_per_s"] / ref_rate
    ref_list = " and ".join(f"{r['utt_per_s']:.1f}" for r in refs)
    # The naive consumer ran the max point's prompts, or payload has a reference on its fewer ones
    # (older payloads ran 200 turns and compared them with the max point's reference).
    ref_naive = payload.get("model_path_reference_naive") or ref
    wm = mx["worker_metrics"]
    inside_rate = mx["events"] / wm["inference_s"] if wm and wm["inference_s"] else float("nan")
    lines = [
        "# Streaming benchmark",
        "",
        f"Command: `{payload['command']}`",
        "",
        machine_md(payload["machine"], payload["machine_end"]),
        "",
        f"Model `{payload['model']['version']}`; worker dtype {payload['worker_dtype']} (`dtype=auto`), "
        f"max_batch_size {st['max_batch_size']}, max_wait_ms {st['max_wait_ms']}, "
        f"{_forward_setting(st)}; local broker (Tansu, memory), "
        f"{st['partitions']} partitions. Data: {st['turns']} MELD dev turns of {st['conversations']} conversations, "
        f"replayed {st['lanes']} conversations at a time (each conversation's turns in order). Latency: record "
        "timestamp (the scheduled send time) -> the event read by a separate consumer. CPU: cores used by each "
        "process over the point (`psutil` user+system / wall).",
        "",
        "## Result",
        "",
        md_table(
            ["", "events/s", "vs naive", "vs model path"],
            [
                ["worker, max rate", mx["events_per_s"], f"{ratio_naive:.1f}x", f"{ratio_model:.0%}"],
                ["naive consumer", nv["events_per_s"], "1x", f"{nv['events_per_s'] / ref_naive['utt_per_s']:.0%}"],
                [
                    f"model path alone (Predictor.predict, batch {ref['batch_size']}"
                    + (f" in parts of {ref['max_forward']}" if ref.get("max_forward") else "")
                    + f", {ref['dtype']}; mean of "
                    f"{ref_list} measured before/after)",
                    ref_rate,
                    "",
                    "100%",
                ],
                [
                    "model path inside the worker, same run (events / erc_inference_seconds)",
                    inside_rate,
                    "",
                    f"{inside_rate / ref_rate:.0%}",
                ],
            ],
        ),
        "",
        f"At max rate the worker's model thread was busy {wm['model_busy_fraction']:.0%} of the wall time, i.e. the "
        "worker "
        f"delivered {mx['events_per_s'] / inside_rate:.0%} of what its own model path did in the same run; the rest of "
        "the pipeline (Kafka, JSON, prompts, batching, acks) runs alongside the model, not in series with it. The "
        "model "
        "path alone is timed in the benchmark process before and after the streaming points; on a loaded shared "
        "machine the two can differ, which is why both are shown." + _reference_coverage(refs, payload),
        "",
        f"Acceptance bar (issue 5): worker >= 10x the naive consumer: **{'met' if ratio_naive >= 10 else 'not met'}** "
        f"({ratio_naive:.1f}x); worker >= 70% of the model path's batched throughput: "
        f"**{'met' if ratio_model >= 0.7 else 'not met'}** ({ratio_model:.0%}).",
        "",
        "## Points",
        "",
    ]
    rows = []
    for p in [*points, nv]:
        lat = p["latency_ms"]
        wm = p.get("worker_metrics") or {}
        proc = "worker" if p["point"] != "naive" else "naive"
        rows.append(
            [
                p["point"],
                "max" if p["offered_rate"] is None else round(p["offered_rate"], 1),
                f"{p['events']}/{p['sent']}",
                p["events_per_s"],
                lat.get(50),
                lat.get(95),
                lat.get(99),
                round(wm.get("mean_batch_size", 1.0), 1),
                f"{wm['model_busy_fraction']:.0%}" if wm else "-",
                round(p["cpu"][proc]["cores"], 2),
                round(p["cpu"]["bench_process"]["cores"], 2),
                p["dead_letters"],
            ]
        )
    lines += [
        md_table(
            [
                "point",
                "offered/s",
                "events",
                "events/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "mean batch",
                "model busy",
                "consumer CPU cores",
                "bench proc cores",
                "dead letters",
            ],
            rows,
        ),
        "",
    ]
    lines += [
        "*model busy*: the worker's `erc_inference_seconds` sum over the point's wall time (the model thread's "
        "share of the time). The naive consumer runs every message as a batch of 1.",
        "",
        "Batch sizes per point (from the worker's `erc_batch_size` histogram; bucket upper bounds):",
        "",
    ]
    brows = []
    for p in points:
        wm = p["worker_metrics"]
        brows.append(
            [
                p["point"],
                wm["batches"],
                ", ".join(f"<={le}: {c}" for le, c in wm["batch_size_hist"].items()),
                f"{wm['padding_fraction']:.1%}",
            ]
        )
    lines += [
        md_table(["point", "batches", "batch-size histogram", "padding"], brows),
        "",
        f"![latency vs throughput]({png_name})",
        "",
    ]
    if payload.get("profile"):
        pr = payload["profile"]
        lines += [
            "## Where the worker's CPU goes (py-spy, warm-up and max points)",
            "",
            f"{pr['samples']} busy samples at 100 Hz (`{pr['path']}`); each stack filed under the first matching "
            "category (rules in `_PROFILE_RULES`).",
            "",
            md_table(["category", "share of busy samples"], [[k, f"{v:.1%}"] for k, v in pr["shares"].items()]),
            "",
            "Innermost Python frames (native torch time shows under the Python call that entered it):",
            "",
            md_table(["leaf frame", "share"], [[f"`{k}`", f"{v:.1%}"] for k, v in pr["top_leaf_frames"].items()]),
            "",
        ]
    if payload.get("worker_src"):
        lines += [f"Worker code from `{payload['worker_src']}` (a before/after comparison), not this checkout.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=None)
    ap.add_argument("--dtype", default="auto", help="worker dtype (auto picks fp32 on CPUs without native bf16)")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=int, default=20)
    ap.add_argument(
        "--max-forward-prompts",
        type=int,
        default=None,
        help="the worker's prompts per forward pass (default: its auto, 8 on a CPU; 0: the whole batch); the "
        "model path reference runs the same",
    )
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--lanes", type=int, default=32, help="conversations replayed concurrently")
    ap.add_argument("--fractions", default="0.25,0.5,0.75", help="offered rates as fractions of the measured maximum")
    ap.add_argument("--rate-duration-s", type=float, default=30.0, help="seconds of offered load per fixed-rate point")
    ap.add_argument(
        "--naive-turns",
        type=int,
        default=None,
        help="turns replayed to the naive consumer (default: all the max point's; fewer are its early, short turns, "
        "and the report compares it with the model path on those)",
    )
    ap.add_argument(
        "--reference-budget-s",
        type=float,
        default=None,
        help="stop each model path reference after this many seconds (default: all the point's prompts; a "
        "reference cut short covers the early, shorter turns only, and the report says so)",
    )
    ap.add_argument("--point-timeout-s", type=float, default=300.0)
    ap.add_argument("--conversations", type=int, default=None, help="first N MELD dev conversations (default all)")
    ap.add_argument(
        "--profile", action="store_true", help="sample the worker with py-spy during the warm-up and max points"
    )
    ap.add_argument(
        "--worker-src",
        type=Path,
        default=None,
        help="run the worker from another source tree's erc_stream (e.g. `git archive HEAD erc_stream`) "
        "for before/after comparisons",
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out-dir", type=Path, default=DOCS_DIR)
    ap.add_argument("--name", default="bench_stream")
    # naive-consumer subprocess mode
    ap.add_argument("--naive", action="store_true", help=argparse.SUPPRESS)
    for opt in ("--bootstrap", "--version-dir", "--input-topic", "--output-topic", "--group", "--ready-file"):
        ap.add_argument(opt, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.naive:
        asyncio.run(naive_main(a))
        return
    a.fractions = [float(x) for x in a.fractions.split(",")]
    if a.quick:
        a.conversations = a.conversations or 12
        a.rate_duration_s, a.naive_turns, a.reference_budget_s = 5.0, 20, 3.0
    payload = asyncio.run(driver(a))
    a.out_dir.mkdir(parents=True, exist_ok=True)
    png = a.out_dir / f"{a.name}_latency.png"
    plot(payload, png)
    write_results(a.name, payload, render(payload, png.name), a.out_dir)


if __name__ == "__main__":
    main()
