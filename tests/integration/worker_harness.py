"""Helpers for the worker's broker tests: topics, MELD conversations as turn records, a reader
of the output and dead-letter topics, a worker as a subprocess, /metrics over real HTTP, and
the offline predictions a streamed event must equal.

Everything talks to the real local broker and the real ``erc-stream worker`` program; nothing
here stands in for them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from erc_stream.config import WorkerConfig
from erc_stream.devtools.broker import free_port
from erc_stream.model import Predictor, TurnPredictor
from trainer.datasets import Conversation, load_split
from trainer.evaluate import build_examples, predict_conversations

__all__ = [
    "CLI",
    "FAST_GROUP",
    "Topics",
    "TurnRecord",
    "Expected",
    "OutputReader",
    "WorkerProcess",
    "make_topics",
    "meld_dev",
    "turn_records",
    "produce",
    "produce_raw",
    "worker_config",
    "http_get",
    "metric_value",
    "offline_expected",
    "check_scores",
    "committed_offsets",
    "wait_committed",
    "KillRestart",
    "kill_mid_stream_then_restart",
]

CLI = Path(sys.executable).parent / "erc-stream"
# This broker completes a JoinGroup after about half the session timeout; 6 s keeps rebalances
# near 3 s (erc_stream/devtools/broker.py). The heartbeat must stay well below the session.
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 500}


@dataclass(frozen=True)
class Topics:
    """A test's own input, output and dead-letter topics."""

    input: str
    output: str
    dlq: str
    partitions: int


def make_topics(topic_factory: Callable[..., str], partitions: int = 2) -> Topics:
    """Fresh topics: input and output with ``partitions`` partitions, a one-partition DLQ."""
    return Topics(topic_factory(partitions), topic_factory(partitions), topic_factory(1), partitions)


def meld_dev(n: int, start: int = 0) -> list[Conversation]:
    """``n`` MELD dev conversations (ids like ``meld-dev-3``), in file order."""
    convs = load_split("meld", "dev")[start : start + n]
    assert len(convs) == n, f"MELD dev has only {start + len(convs)} conversations"
    return convs


@dataclass(frozen=True)
class TurnRecord:
    """One turn of a conversation as a keyed record for the turns topic."""

    conversation_id: str
    turn_id: str
    index: int  # position in its conversation
    key: bytes
    value: bytes

    @property
    def event_id(self) -> str:
        return f"{self.conversation_id}:{self.turn_id}"


def turn_records(convs: Sequence[Conversation], turns: slice = slice(None)) -> list[TurnRecord]:
    """The turns of ``convs`` (only positions in ``turns``), conversations interleaved round-robin
    the way live traffic would arrive, each conversation's turns in order. ``turn_id`` is sent as
    a JSON integer (the event carries it as a string)."""
    per_conv: list[list[TurnRecord]] = []
    for conv in convs:
        positions = range(len(conv.utterances))[turns]
        recs = []
        for i in positions:
            u = conv.utterances[i]
            value = orjson.dumps({"conversation_id": conv.id, "turn_id": i, "speaker": u.speaker, "text": u.text})
            recs.append(TurnRecord(conv.id, str(i), i, conv.id.encode(), value))
        per_conv.append(recs)
    out: list[TurnRecord] = []
    for round_ in range(max((len(r) for r in per_conv), default=0)):
        out.extend(r[round_] for r in per_conv if round_ < len(r))
    return out


async def produce_raw(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]) -> list:
    """Send (key, value) pairs in order (acks=all); returns each record's RecordMetadata."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=value, key=key) for key, value in records]
        return [await f for f in futures]
    finally:
        await producer.stop()


async def produce(bootstrap: str, topic: str, records: Sequence[TurnRecord]) -> list:
    return await produce_raw(bootstrap, topic, ((r.key, r.value) for r in records))


def worker_config(bootstrap: str, topics: Topics, store: Path, group_id: str, **changes) -> WorkerConfig:
    """A WorkerConfig for tests: own topics and group, CPU fp32, quick commits, polls and rebalances,
    metrics on a free loopback port."""
    settings = dict(
        bootstrap_servers=bootstrap,
        input_topic=topics.input,
        output_topic=topics.output,
        dlq_topic=topics.dlq,
        group_id=group_id,
        model_store=store,
        device="cpu",
        dtype="fp32",
        max_batch_size=8,
        max_in_flight=64,
        max_wait_ms=10,
        commit_interval_ms=100,
        reload_poll_s=0.3,
        metrics_host="127.0.0.1",
        metrics_port=0,
        shutdown_timeout_s=20.0,
        **FAST_GROUP,
    )
    settings.update(changes)
    return WorkerConfig(**settings)


# ---------------------------------------------------------------- reading the output


@dataclass(frozen=True)
class OutRecord:
    value: dict
    partition: int
    offset: int
    key: bytes | None


@dataclass
class OutputReader:
    """Reads the output and dead-letter topics from the beginning (no group, nothing committed)."""

    bootstrap: str
    topics: Topics
    events: list[OutRecord] = field(default_factory=list)
    dead: list[OutRecord] = field(default_factory=list)
    _consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> OutputReader:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest", group_id=None
        )
        await self._consumer.start()
        tps = [TopicPartition(self.topics.output, p) for p in range(self.topics.partitions)]
        tps.append(TopicPartition(self.topics.dlq, 0))
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        return self

    async def __aexit__(self, *exc) -> None:
        await self._consumer.stop()

    async def poll(self, timeout_ms: int = 200) -> int:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms)
        n = 0
        for tp, recs in batches.items():
            target = self.events if tp.topic == self.topics.output else self.dead
            for rec in recs:
                target.append(OutRecord(orjson.loads(rec.value), tp.partition, rec.offset, rec.key))
                n += 1
        return n

    async def wait_for(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Poll until ``done()`` or the timeout; returns ``done()``."""
        deadline = time.monotonic() + timeout_s
        while not done() and time.monotonic() < deadline:
            await self.poll()
        return done()

    async def wait_for_ids(self, event_ids: Iterable[str], timeout_s: float, dead: int = 0) -> None:
        """Until every id in ``event_ids`` has an event and ``dead`` dead letters arrived; fails with
        what is missing otherwise."""
        want = set(event_ids)
        ok = await self.wait_for(lambda: want <= self.event_ids() and len(self.dead) >= dead, timeout_s)
        if not ok:
            missing = sorted(want - self.event_ids())
            raise AssertionError(
                f"after {timeout_s} s: {len(missing)} events missing (e.g. {missing[:5]}), "
                f"{len(self.dead)}/{dead} dead letters"
            )

    async def settle(self, quiet_s: float = 1.5) -> None:
        """Keep reading until nothing new arrived for ``quiet_s`` (catches late duplicates)."""
        last = time.monotonic()
        while time.monotonic() - last < quiet_s:
            if await self.poll(timeout_ms=300):
                last = time.monotonic()

    def event_ids(self) -> set[str]:
        return {e.value["event_id"] for e in self.events}

    def id_counts(self) -> Counter:
        return Counter(e.value["event_id"] for e in self.events)

    def duplicates(self) -> int:
        """Events beyond the first per event id."""
        return sum(c - 1 for c in self.id_counts().values())

    def by_conversation(self) -> dict[str, list[OutRecord]]:
        """Each conversation's events in output-log order (partition, offset)."""
        out: dict[str, list[OutRecord]] = defaultdict(list)
        for e in sorted(self.events, key=lambda e: (e.partition, e.offset)):
            out[e.value["conversation_id"]].append(e)
        return dict(out)


# ---------------------------------------------------------------- offsets


async def committed_offsets(bootstrap: str, group_id: str, topic: str, partitions: int) -> dict[int, int | None]:
    """The group's committed offset per partition (read with ``committed()``, which this broker answers)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


async def wait_committed(
    bootstrap: str, group_id: str, topic: str, want: dict[int, int], timeout_s: float = 30
) -> None:
    """Until the group's committed offset on each partition of ``want`` is ``want``'s (the next offset)."""
    deadline = time.monotonic() + timeout_s
    while True:
        committed = await committed_offsets(bootstrap, group_id, topic, max(want) + 1)
        got = {p: committed[p] for p in want}
        if got == want:
            return
        assert time.monotonic() < deadline, f"committed {got}, want {want}"
        await asyncio.sleep(0.2)


@dataclass(frozen=True)
class KillRestart:
    """What ``kill_mid_stream_then_restart`` saw."""

    reader: OutputReader  # every event of both workers
    seen_before_kill: int  # events out before the first worker was killed


def kill_mid_stream_then_restart(
    bootstrap: str,
    topics: Topics,
    store: Path,
    group_id: str,
    log_dir: Path,
    *,
    phase_a: Sequence[TurnRecord],
    in_flight: Sequence[TurnRecord],
    phase_b: Sequence[TurnRecord],
    wait_s: float = 180,
    **settings: object,
) -> KillRestart:
    """A worker SIGKILLed mid-stream, then a second one of the same group.

    Worker 1 answers ``phase_a`` and commits its offsets; ``in_flight`` is produced and worker 1 is
    killed as soon as one of its events is out (the rest of in_flight uncommitted, in its batches);
    ``phase_b`` is produced and worker 2 runs until every turn of the three has an event (at most
    ``wait_s``). Only in_flight's turns may come out twice. ``settings``: the workers' ``ERC_*``.
    """

    async def scenario() -> KillRestart:
        async with OutputReader(bootstrap, topics) as reader:
            metas = await produce(bootstrap, topics.input, phase_a)
            ends = {p: max(m.offset for m in metas if m.partition == p) + 1 for p in range(topics.partitions)}
            w1 = WorkerProcess(bootstrap, topics, store, group_id, log_dir / "w1.log", **settings)
            try:
                await w1.wait_ready()
                await reader.wait_for_ids([r.event_id for r in phase_a], timeout_s=120)
                # Everything so far is committed before the in-flight records arrive.
                await wait_committed(bootstrap, group_id, topics.input, ends)
                await produce(bootstrap, topics.input, in_flight)
                ids = {r.event_id for r in in_flight}
                await reader.wait_for(lambda: bool(ids & reader.event_ids()), timeout_s=60)
                w1.signal(signal.SIGKILL)
                assert await w1.wait_exit(10) == -signal.SIGKILL
            finally:
                w1.close()
            seen_before_kill = len(reader.events)
            await produce(bootstrap, topics.input, phase_b)
            w2 = WorkerProcess(bootstrap, topics, store, group_id, log_dir / "w2.log", **settings)
            try:
                await reader.wait_for_ids([r.event_id for r in [*phase_a, *in_flight, *phase_b]], timeout_s=wait_s)
                await reader.settle(1.5)
            finally:
                w2.signal(signal.SIGTERM)
                await w2.wait_exit(30)
                w2.close()
            return KillRestart(reader, seen_before_kill)

    return asyncio.run(scenario())


# ---------------------------------------------------------------- HTTP and metrics


async def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        async with session.get(url) as resp:
            return resp.status, await resp.text()


def metric_value(text: str, sample: str, **labels: str) -> float:
    """Value of one sample in Prometheus text (0.0 when the labelled series does not exist yet)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


# ---------------------------------------------------------------- a worker subprocess


class WorkerProcess:
    """``erc-stream worker`` as a child process configured only through ``ERC_*`` variables.

    Output goes to ``log_path``; /metrics, /healthz and /readyz listen on ``self.port``.
    """

    def __init__(
        self, bootstrap: str, topics: Topics, store: Path, group_id: str, log_path: Path, **settings: object
    ) -> None:
        self.port = free_port()
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("ERC_")}
        env.update(
            {
                "ERC_BOOTSTRAP_SERVERS": bootstrap,
                "ERC_INPUT_TOPIC": topics.input,
                "ERC_OUTPUT_TOPIC": topics.output,
                "ERC_DLQ_TOPIC": topics.dlq,
                "ERC_GROUP_ID": group_id,
                "ERC_MODEL_STORE": str(store),
                "ERC_DEVICE": "cpu",
                "ERC_DTYPE": "fp32",
                "ERC_METRICS_HOST": "127.0.0.1",
                "ERC_METRICS_PORT": str(self.port),
                "ERC_COMMIT_INTERVAL_MS": "100",
                "ERC_MAX_WAIT_MS": "10",
                "ERC_SESSION_TIMEOUT_MS": str(FAST_GROUP["session_timeout_ms"]),
                "ERC_HEARTBEAT_INTERVAL_MS": str(FAST_GROUP["heartbeat_interval_ms"]),
                "HF_HUB_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
                "COLUMNS": "400",
            }
        )
        env.update({f"ERC_{k.upper()}": str(v) for k, v in settings.items()})
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [str(CLI), "worker"], env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    async def wait_ready(self, timeout_s: float = 90.0) -> float:
        """Until /readyz answers 200 (model loaded, partitions assigned); returns the seconds it took."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode} before ready:\n{self.log_tail()}")
            try:
                status, _ = await http_get(self.url + "/readyz", timeout_s=2.0)
                if status == 200:
                    return time.monotonic() - t0
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout_s} s:\n{self.log_tail()}")

    async def metrics(self) -> str:
        status, text = await http_get(self.url + "/metrics")
        assert status == 200
        return text

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.proc.returncode is None:
            raise AssertionError(f"worker still running after {timeout_s} s:\n{self.log_tail()}")
        return self.proc.returncode

    def close(self) -> None:
        """Kill it if still running (test cleanup)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log.close()


# ---------------------------------------------------------------- offline reference


@dataclass(frozen=True)
class Expected:
    """What the offline evaluator predicts for one turn."""

    scores: np.ndarray  # (C,) cosine to each anchor, label order
    label_id: int
    gold_id: int
    context_used: int
    top2_gap: float  # best minus second-best score; argmax is only meaningful above rounding noise


def offline_expected(predictor: Predictor | TurnPredictor, convs: Sequence[Conversation]) -> dict[str, Expected]:
    """Event id -> what `erc-train evaluate` predicts for that turn, for either architecture.

    Window models: prompts from ``trainer.evaluate.build_examples``. Turn models:
    ``trainer.evaluate.predict_conversations`` (every turn encoded once, one context pass per turn).
    """
    if isinstance(predictor, TurnPredictor):
        res = predict_conversations(predictor, convs)
        rows = [
            (f"{cid}:{i}", res.predictions.scores[row], int(res.predictions.label_ids[row]), gold,
             min(i, predictor.builder.context_turns))
            for row, ((cid, i), gold) in enumerate(zip(res.keys, res.gold, strict=True))
        ]  # fmt: skip
    else:
        label_id = {label: i for i, label in enumerate(predictor.labels)}
        examples = build_examples(predictor.builder, convs, label_id)
        preds = predictor.predict([p for p, _ in examples])
        ids = [f"{c.id}:{i}" for c in convs for i in range(len(c.utterances))]
        rows = [
            (eid, preds.scores[row], int(preds.label_ids[row]), gold, prompt.context_used)
            for row, (eid, (prompt, gold)) in enumerate(zip(ids, examples, strict=True))
        ]
    out = {}
    for eid, s, label, gold, context in rows:
        top = np.sort(s)[::-1]
        out[eid] = Expected(s.copy(), label, gold, context, float(top[0] - top[1]))
    return out


def check_scores(events: Iterable[OutRecord], expected: dict[str, Expected], labels: Sequence[str], tol: float) -> int:
    """Every event equals the offline prediction of its turn: scores within ``tol``, the context
    length, and the emotion wherever the top two scores are further apart than ``tol``. Returns
    the number of events whose offline top two were within ``tol`` (ties: emotion not compared)."""
    ties = 0
    for e in events:
        v = e.value
        exp = expected[v["event_id"]]
        got = np.array([v["scores"][label] for label in labels])
        np.testing.assert_allclose(got, exp.scores, atol=tol, rtol=0, err_msg=v["event_id"])
        assert v["context_turns"] == exp.context_used, v["event_id"]
        if exp.top2_gap > tol:
            assert v["emotion"] == labels[exp.label_id], v["event_id"]
        else:
            ties += 1
    return ties
